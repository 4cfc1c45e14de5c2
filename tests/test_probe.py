"""The machine probe: small graphs of the model's own shapes, float against int8 per runtime, judged
against their noise; the verdicts follow the timings; the CLI prints and writes them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.helpers import TINY, run_cli, tiny_vit
from vitslim.evaluate.runtimes import ort_runtime_ops, ort_session
from vitslim.runtimes import RUNTIMES, Deployed, Runtime, Timed
from vitslim.runtimes.probe import ProbeShape, int8_pays, probe, probe_graphs, probe_shape

SHAPE = ProbeShape(tokens=17, dim=64, hidden=256, heads=2)


def test_the_shape_is_read_from_the_model() -> None:
    assert probe_shape(tiny_vit("vit"), (3, 32, 32)) == ProbeShape(tokens=17, dim=64, hidden=256, heads=2)


def test_int8_graphs_compute_the_float_ones_and_run_integer_kernels(tmp_path: Path) -> None:
    graphs = probe_graphs(SHAPE, batch=2)
    outputs = {}
    for name, (graph, input_size) in graphs.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(graph, path)
        session = ort_session(path, threads=1)
        x = np.random.default_rng(0).standard_normal((2, *input_size), dtype=np.float32) * 0.5
        outputs[name] = session.run(None, {session.get_inputs()[0].name: x})[0]
        if name.endswith("int8"):  # what is timed is ONNX Runtime's integer kernel, not float emulation
            assert ort_runtime_ops(path, 1).get("MatMulIntegerToFloat") == 1, name
    for layer in ("linear", "attention"):
        exact, quantized = outputs[f"{layer}-fp32"], outputs[f"{layer}-int8"]
        assert np.corrcoef(exact.ravel(), quantized.ravel())[0, 1] > 0.99, layer


class Stopwatch(Runtime):
    """A toy runtime: int8 Linear graphs take 1 ms and float ones 6 ms; attention the other way round."""

    name = "stopwatch"
    title = "Stopwatch"

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        int8, linear = deployed.name.endswith("int8"), deployed.name.startswith("linear")
        seconds = 0.001 if int8 == linear else 0.006
        return {"": Timed(lambda: time.sleep(seconds), "dial")}


@pytest.fixture
def stopwatch() -> Any:
    with RUNTIMES.registered(Stopwatch.name, Stopwatch()) as runtime:
        yield runtime


def test_the_verdicts_follow_the_timings(stopwatch) -> None:
    rows = probe(SHAPE, ["stopwatch"], batch_sizes=[1], threads=1, runs=15)
    assert [(r["layer"], r["precision"], r["verdict"]) for r in rows] == [
        ("linear", "int8", "faster"),
        ("attention", "int8", "slower"),
    ]
    assert int8_pays(rows, "stopwatch", "linear", 1) is True and int8_pays(rows, "stopwatch", "attention", 1) is False
    assert int8_pays(rows, "stopwatch", "linear", 16) is None
    linear = rows[0]
    assert linear["speedup"] > 3 and linear["round_range"][0] > 1 and linear["against"] == "dial"


def test_the_probe_command_prints_and_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    args = ["--runtime", "onnxruntime", "--batch-sizes", "1", "--threads", "1", "--runs", "5", "--json", str(out)]
    result = run_cli("probe", *TINY, *args)
    assert result.exit_code == 0, result.output
    probed = json.loads(out.read_text())
    assert probed["shape"] == {"tokens": 17, "dim": 64, "hidden": 256, "heads": 2}
    assert [(r["runtime"], r["layer"], r["precision"]) for r in probed["probe"]] == [
        ("onnxruntime", "linear", "int8"),
        ("onnxruntime", "attention", "int8"),
    ]
    assert all(r["p50_ms"] > 0 and r["verdict"] in ("faster", "slower", "within noise") for r in probed["probe"])
    assert "onnxruntime" in probed["environment"]["runtimes"] and "linear b1" in result.output
