"""The 2:4 pattern: in every group of 4 consecutive weights along the reduction axis, at most 2
are non-zero (the layout cuSPARSELt and TensorRT's sparse weights accelerate)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["GROUP", "KEEP", "mask_24", "holds_24", "zero_fraction"]

#: Weights per group along the reduction axis, and how many of them may be non-zero.
GROUP, KEEP = 4, 2


def mask_24(scores: Tensor) -> Tensor:
    """Boolean keep-mask of ``scores`` ``[..., K]`` (``K`` a multiple of 4): the 2 highest scores
    of every group of 4 consecutive entries along the last axis are True."""
    if scores.shape[-1] % GROUP:
        raise ValueError(f"the last axis ({scores.shape[-1]}) is not a multiple of {GROUP}")
    groups = scores.reshape(*scores.shape[:-1], -1, GROUP)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(KEEP, dim=-1).indices, True)
    return keep.reshape(scores.shape)


def holds_24(weight: Tensor | np.ndarray, axis: int = -1) -> bool:
    """Whether ``weight`` has at most 2 non-zeros in every group of 4 along ``axis``
    (False when that axis is not a multiple of 4)."""
    w = np.moveaxis(_numpy(weight) if isinstance(weight, Tensor) else np.asarray(weight), axis, -1)
    if w.shape[-1] % GROUP:
        return False
    return bool(((w.reshape(-1, GROUP) != 0).sum(-1) <= KEEP).all())


def zero_fraction(weight: Tensor | np.ndarray) -> float:
    """Fraction of exactly zero entries."""
    w = _numpy(weight) if isinstance(weight, Tensor) else np.asarray(weight)
    return float((w == 0).mean()) if w.size else 0.0


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()
