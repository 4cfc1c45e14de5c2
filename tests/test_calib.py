"""Tests for vitslim.calib: image folders, Fashion-MNIST, sampling and loaders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vitslim.calib import (
    DEFAULT_ROOT,
    FashionMNIST,
    ImageFolderDataset,
    build_transform,
    load_dataset,
    make_loader,
    sample_indices,
)
from vitslim.calib.fashion_mnist import read_idx
from vitslim.errors import UserError


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128 if mode in ("L", "P") else (200, 30, 60)[: len(mode)]).save(path)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    write_image(tmp_path / "dog" / "a.png")
    write_image(tmp_path / "dog" / "b.JPG")
    write_image(tmp_path / "dog" / "nested" / "c.bmp", mode="L")
    write_image(tmp_path / "cat" / "a.webp")
    write_image(tmp_path / "cat" / "b.gif", mode="P")
    write_corrupt(tmp_path / "cat" / "broken.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty_dir").mkdir()
    write_image(tmp_path / "loose.png")
    return tmp_path


# --- image folders ---------------------------------------------------------------------------


def test_class_layout_labels_sorted_classes(class_folder: Path) -> None:
    ds = ImageFolderDataset(class_folder)
    assert ds.classes == ["cat", "dog"]
    assert ds.labelled
    assert len(ds) == 5
    labels = sorted(label for _, label in ds.samples)
    assert labels == [0, 0, 1, 1, 1]
    assert ds.skipped == [class_folder / "cat" / "broken.png"]
    assert ds.ignored_loose == 1


def test_items_are_rgb_through_transform(class_folder: Path) -> None:
    ds = ImageFolderDataset(class_folder, transform=lambda im: (im.mode, im.size))
    assert {ds[i][0] for i in range(len(ds))} == {("RGB", (12, 10))}


def test_flat_layout_is_unlabelled(tmp_path: Path) -> None:
    for name in ("x.png", "y.jpeg", "z.TIFF"):
        write_image(tmp_path / name)
    write_corrupt(tmp_path / "bad.jpg")
    (tmp_path / "sub").mkdir()
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes is None and not ds.labelled
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.ignored_loose == 0
    image, label = ds[0]
    assert label == -1 and image.mode == "RGB"


def missing(p: Path) -> Path:
    return p / "missing"


def a_file(p: Path) -> Path:
    return write_image(p / "file.png")


def empty(p: Path) -> Path:
    return p


def non_images(p: Path) -> Path:
    for i in range(3):
        (p / f"{i}.txt").write_text("x")
    return p


def all_corrupt(p: Path) -> Path:
    write_corrupt(p / "c" / "a.png")
    write_corrupt(p / "c" / "b.jpg")
    return p


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (missing, "does not exist"),
        (a_file, "not a folder"),
        (empty, "contains no images"),
        (non_images, "contains no images"),
        (all_corrupt, "None of the 2 images"),
    ],
    ids=["missing", "a-file", "empty", "non-images", "all-corrupt"],
)
def test_folder_user_errors(tmp_path: Path, setup, message: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_truncated_jpeg_fails_clearly_on_access(tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[:2000])  # header intact, pixel data cut
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(UserError, match="could not be decoded") as info:
        ds[0]
    assert str(path) in str(info.value)


def test_load_dataset_folder(class_folder: Path) -> None:
    ds = load_dataset(str(class_folder))
    assert isinstance(ds, ImageFolderDataset) and ds.classes == ["cat", "dog"]


# --- Fashion-MNIST ---------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "size"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_splits(split: str, size: int) -> None:
    ds = FashionMNIST(split)
    assert len(ds) == size and ds.images.shape == (size, 28, 28)
    assert np.bincount(ds.labels).tolist() == [size // 10] * 10
    assert len(ds.classes) == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.labelled and ds.skipped == []
    image, label = ds[0]
    assert image.mode == "RGB" and image.size == (28, 28) and 0 <= label <= 9


def test_load_dataset_fashion_mnist_specs() -> None:
    assert load_dataset("fashion-mnist").split == "test"
    assert load_dataset("fashion-mnist:train").split == "train"
    assert len(load_dataset("fashion-mnist:test")) == 10000
    with pytest.raises(UserError, match="split"):
        load_dataset("fashion-mnist:valid")


def test_fashion_mnist_missing_files_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as info:
        FashionMNIST("test", root=tmp_path)
    assert str(tmp_path) in str(info.value)


def write_idx(path: Path, magic: int, array: np.ndarray) -> Path:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def test_read_idx_roundtrip_and_corruption(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = write_idx(tmp_path / "good.gz", 2051, images)
    np.testing.assert_array_equal(read_idx(good, 2051), images)
    with pytest.raises(UserError, match="magic number 2051, expected 2049"):
        read_idx(good, 2049)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:-1]))
    with pytest.raises(UserError, match="expected 40"):
        read_idx(truncated, 2051)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"hello")
    with pytest.raises(UserError, match="gzip"):
        read_idx(not_gzip, 2051)


def test_corrupted_copy_of_real_labels_is_rejected(tmp_path: Path) -> None:
    raw = bytearray(gzip.decompress((DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[3] = 0x03  # 2049 -> 2051
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match="magic number 2051, expected 2049"):
        FashionMNIST("test", root=tmp_path)


# --- sampling --------------------------------------------------------------------------------


def test_sample_indices_all_when_no_limit() -> None:
    assert sample_indices(5, None, seed=1) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 5, seed=1) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 99, seed=1) == [0, 1, 2, 3, 4]
    assert sample_indices(0, 3, seed=1) == []


def test_sample_indices_seeds_differ() -> None:
    assert sample_indices(1000, 10, seed=0) != sample_indices(1000, 10, seed=1)


def test_sample_indices_rejects_non_positive_limit() -> None:
    with pytest.raises(UserError):
        sample_indices(10, 0, seed=0)


@given(total=st.integers(0, 500), limit=st.integers(1, 600), seed=st.integers(0, 2**32))
def test_sample_indices_properties(total: int, limit: int, seed: int) -> None:
    chosen = sample_indices(total, limit, seed)
    assert chosen == sample_indices(total, limit, seed)
    assert len(chosen) == min(total, limit)
    assert chosen == sorted(set(chosen))
    assert all(0 <= i < total for i in chosen)


# --- transforms and loaders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data_config() -> dict:
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2
    )
    return timm.data.resolve_data_config({}, model=model)


def test_build_transform_ignores_unknown_keys(tiny_data_config: dict) -> None:
    transform = build_transform({**tiny_data_config, "input_size": (3, 32, 32), "unrelated": 1})
    out = transform(Image.new("RGB", (50, 40)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_loader_batches(class_folder: Path, tiny_data_config: dict) -> None:
    _, height, width = tiny_data_config["input_size"]
    ds = ImageFolderDataset(class_folder, transform=build_transform(tiny_data_config))
    batches = list(make_loader(ds, batch_size=2, limit=4, seed=3))
    assert [len(labels) for _, labels in batches] == [2, 2]
    images, labels = batches[0]
    assert images.shape == (2, 3, height, width) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    again = torch.cat([labels for _, labels in make_loader(ds, batch_size=2, limit=4, seed=3)])
    assert torch.equal(again, torch.cat([labels for _, labels in batches]))


def test_loader_on_fashion_mnist(tiny_data_config: dict) -> None:
    ds = load_dataset("fashion-mnist", transform=build_transform({**tiny_data_config, "input_size": (3, 32, 32)}))
    images, labels = next(iter(make_loader(ds, batch_size=8, limit=20, seed=0)))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,) and labels.dtype == torch.long
