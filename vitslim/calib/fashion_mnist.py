"""Fashion-MNIST from the idx files of the Debian package ``dataset-fashion-mnist``."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vitslim.errors import UserError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = {"train": "train", "test": "t10k"}
IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist`"


@functools.lru_cache(maxsize=8)
def read_idx(path: Path, magic: int) -> np.ndarray:
    """The read-only uint8 array in the gzipped idx file ``path``, whose magic number must be ``magic``."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"Fashion-MNIST file {path} is missing; {INSTALL_HINT}.") from None
    except (OSError, EOFError) as e:
        raise UserError(f"Fashion-MNIST file {path} is not a readable gzip file ({e}).") from None
    ndim = magic & 0xFF  # the idx magic number's low byte is the number of dimensions
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise UserError(f"Fashion-MNIST file {path} is too short to be an idx file.")
    found, *shape = (int(v) for v in np.frombuffer(data, dtype=">u4", count=1 + ndim))
    if found != magic:
        raise UserError(f"Fashion-MNIST file {path} has idx magic number {found}, expected {magic}.")
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"Fashion-MNIST file {path} holds {len(data)} bytes, expected {expected} for shape {shape}.")
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    array.setflags(write=False)
    return array


class FashionMNIST(Dataset):
    """One split of Fashion-MNIST; items are ``(transform(28x28 RGB image), label)``.

    The arrays are cached per file, so building the dataset again costs nothing.
    """

    classes = CLASSES
    labelled = True

    def __init__(
        self,
        split: str = "train",
        root: str | Path = DEFAULT_ROOT,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise UserError(f"Fashion-MNIST split must be one of {', '.join(SPLITS)}, not {split!r}.")
        self.split = split
        self.root = Path(root)
        self.transform = transform
        self.skipped: list[Path] = []
        prefix = SPLITS[split]
        self.images = read_idx(self.root / f"{prefix}-images-idx3-ubyte.gz", IMAGES_MAGIC)
        self.labels = read_idx(self.root / f"{prefix}-labels-idx1-ubyte.gz", LABELS_MAGIC)
        if len(self.images) != len(self.labels):
            raise UserError(
                f"Fashion-MNIST {split} files in {self.root} hold {len(self.images)} images "
                f"but {len(self.labels)} labels."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(image) if self.transform else image), int(self.labels[index])
