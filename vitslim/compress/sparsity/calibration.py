"""Calibration images for the data-driven sparsity methods (the Hessians and the sequential
scheme live in :mod:`vitslim.compress.hessian`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from vitslim.compress.quant.calibration import calibration_batches

__all__ = ["calibration_subset"]


def calibration_subset(data: Tensor | Iterable, samples: int, seed: int, device: torch.device) -> list[Tensor]:
    """Image batches of ``data`` (tensor or DataLoader of ``(images, labels)``) on ``device``; at most
    ``samples`` images, a subset drawn with ``seed`` (batches of the first batch's size) when more."""
    batches = calibration_batches(data, device)
    total = sum(b.shape[0] for b in batches)
    if total <= samples:
        return batches
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    return list(torch.cat(batches)[pick.to(device)].split(batches[0].shape[0]))
