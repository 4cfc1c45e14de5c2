"""SparseGPT 2:4 pruning of one weight matrix (Frantar & Alistarh, 2023).

The columns of ``W`` are swept left to right (:func:`~vitslim.compress.calibration.hessian.obs_sweep`, with
the layer-input Hessian ``H = XᵀX``). At every 4th column the mask of the next group of 4 is
chosen per row by the OBS saliency ``w² / [H⁻¹]²_cc`` of the already updated weights (the 2
largest kept); each pruned weight's error is spread over the columns not yet processed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitslim.compress.calibration.hessian import obs_sweep

from .pattern import GROUP, mask_24

__all__ = ["sparsegpt_24"]


def sparsegpt_24(weight: Tensor, hessian: Tensor, dampening: float = 0.01, block_size: int = 128) -> Tensor:
    """``weight`` ``[out, in]`` pruned to 2:4 along ``in`` with the OBS update of the kept weights
    (see the module docstring); ``hessian`` is ``XᵀX`` ``[in, in]``. Returns a new tensor."""
    if block_size % GROUP:
        raise ValueError(f"block_size must be a multiple of {GROUP}")
    keep = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)

    def prune(column: int, rest: Tensor, diag: Tensor) -> Tensor:
        if column % GROUP == 0:  # block_size is a multiple of GROUP: a group never straddles blocks
            keep[:, column : column + GROUP] = mask_24(rest[:, :GROUP] ** 2 / diag[:GROUP] ** 2)
        return torch.where(keep[:, column], rest[:, 0], torch.zeros_like(rest[:, 0]))

    pruned = obs_sweep(weight, hessian, prune, dampening, block_size)
    return (pruned * keep).to(weight.dtype)
