"""Calibration and evaluation data: image folders, Fashion-MNIST, seeded sampling and batching."""

from vitslim.calib.datasets import IMAGE_EXTENSIONS, ImageFolderDataset
from vitslim.calib.fashion_mnist import DEFAULT_ROOT, FashionMNIST
from vitslim.calib.loaders import build_transform, load_dataset, make_loader, sample_indices

__all__ = [
    "DEFAULT_ROOT",
    "IMAGE_EXTENSIONS",
    "FashionMNIST",
    "ImageFolderDataset",
    "build_transform",
    "load_dataset",
    "make_loader",
    "sample_indices",
]
