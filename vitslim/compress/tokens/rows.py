"""Row selection shared by the reducers: one flat Gather, exported without index expansion."""

from __future__ import annotations

import torch

__all__ = ["flat_rows", "take_flat", "take_rows"]


def flat_rows(idx: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``idx`` [B, K] (rows of a [B, num_rows, C] tensor) as [B * K] rows of its [B * num_rows, C]
    view; only these offsets depend on the (dynamic) batch size. Build it once per index."""
    offsets = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1) * num_rows
    return (idx + offsets).reshape(-1)


def take_flat(x: torch.Tensor, flat: torch.Tensor, count: int) -> torch.Tensor:
    """The rows ``flat`` (:func:`flat_rows`, ``count`` per image) of ``x`` [B, T, C] as [B, count, C]:
    one Gather on axis 0 (not an expanded GatherElements, a slow reference kernel in OpenVINO)."""
    c = x.shape[2]
    return x.reshape(-1, c).index_select(0, flat).reshape(-1, count, c)


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, i]]`` for ``x`` [B, T, C] and ``idx`` [B, K]."""
    return take_flat(x, flat_rows(idx, x.shape[1]), idx.shape[1])
