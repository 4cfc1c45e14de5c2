"""Calibration images as batches, and runs of them through a model that end after one module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from vitslim.errors import UserError

__all__ = ["calibration_batches", "calibration_subset", "run_until"]


def calibration_batches(data: Tensor | Iterable, device: torch.device | None = None) -> list[Tensor]:
    """Image batches from a tensor ``[B, 3, H, W]``, or an iterable (a DataLoader) of tensors
    or of ``(images, labels, ...)`` tuples."""
    items = [data] if isinstance(data, Tensor) else list(data)
    batches = []
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise UserError(f"calibration data must be image batches [B, 3, H, W], got {type(x).__name__}")
        batches.append(x.float() if device is None else x.to(device=device, dtype=torch.float32))
    if not batches or sum(b.shape[0] for b in batches) == 0:
        raise UserError("no calibration images")
    return batches


def calibration_subset(data: Tensor | Iterable, samples: int, seed: int, device: torch.device) -> list[Tensor]:
    """Image batches of ``data`` (tensor or DataLoader of ``(images, labels)``) on ``device``; at most
    ``samples`` images, a subset drawn with ``seed`` (batches of the first batch's size) when more."""
    batches = calibration_batches(data, device)
    total = sum(b.shape[0] for b in batches)
    if total <= samples:
        return batches
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    return list(torch.cat(batches)[pick.to(device)].split(batches[0].shape[0]))


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def run_until(model: nn.Module, batches: Sequence[Tensor], stop_after: nn.Module | None, bar) -> None:
    """Run every batch through ``model``, ending each pass after ``stop_after`` (None: full pass)."""

    def stop(*_args) -> None:
        raise _Stop

    handle = stop_after.register_forward_hook(stop) if stop_after is not None else None
    try:
        for x in batches:
            with contextlib.suppress(_Stop):
                model(x)
            bar.update(1)
    finally:
        if handle is not None:
            handle.remove()
