"""Choosing a dataset from a spec, sampling a fixed subset of it and batching it."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import timm.data
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from vitslim.calib.datasets import ImageFolderDataset
from vitslim.calib.fashion_mnist import FashionMNIST
from vitslim.errors import UserError

FASHION_MNIST = "fashion-mnist"
# The keys of a timm data config that shape evaluation preprocessing.
EVAL_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def load_dataset(spec: str, transform: Callable[[Image.Image], Any] | None = None) -> Dataset:
    """``"fashion-mnist"`` (test split), ``"fashion-mnist:train"``/``":test"``, or an image folder path."""
    name, _, split = spec.partition(":")
    if name == FASHION_MNIST:
        return FashionMNIST(split=split or "test", transform=transform)
    return ImageFolderDataset(spec, transform=transform)


def sample_indices(total: int, limit: int | None, seed: int) -> list[int]:
    """All of ``range(total)`` if ``limit`` is None or covers it, else a seeded subset of ``limit``, sorted."""
    if total < 0:
        raise ValueError(f"total must be non-negative, got {total}")
    if limit is not None and limit < 1:
        raise UserError(f"The sample limit must be at least 1, got {limit}.")
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def build_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], Any]:
    """Evaluation preprocessing (resize, center crop, normalize) for a timm data config.

    ``data_config`` is what ``timm.data.resolve_data_config`` returns; other keys are ignored.
    """
    kwargs = {k: data_config[k] for k in EVAL_TRANSFORM_KEYS if k in data_config}
    return timm.data.create_transform(**kwargs, is_training=False)


def make_loader(
    dataset: Dataset, batch_size: int = 32, limit: int | None = None, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """Batches ``(images [B,3,H,W], labels [B])`` of a seeded subset of ``dataset``, in a fixed order.

    The dataset's transform must turn images into tensors (see ``build_transform``).
    """
    subset = Subset(dataset, sample_indices(len(dataset), limit, seed))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
