"""SparseGPT 2:4 pruning of one weight matrix (Frantar & Alistarh, 2023).

With the layer-input Hessian ``H = XᵀX`` (``X``: calibration inputs, one row per token), the
columns of ``W`` are processed left to right in blocks. At every 4th column the mask of the next
group of 4 is chosen per row by the OBS saliency ``w² / [H⁻¹]²_cc`` (the 2 largest kept). Each
pruned weight's error ``(w - q) / [H⁻¹]_cc`` is spread over the not yet processed columns along
the row ``[H⁻¹]_{c, c:}`` of the upper Cholesky factor of ``H⁻¹`` (the inverse Hessian of the
remaining columns, without explicit updates), inside the block at once and lazily to the columns
after it. ``H`` is dampened by ``dampening · mean(diag H)`` on the diagonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitslim.errors import UserError

from .pattern import GROUP, mask_24

__all__ = ["inverse_hessian_factor", "sparsegpt_24"]


def inverse_hessian_factor(hessian: Tensor, dampening: float) -> Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹ = UᵀU``, ``λ = dampening · mean(diag H)``
    (float64). Inputs that never fired (zero diagonal) get a unit diagonal."""
    h = hessian.double().clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += dampening * diag.mean()
    factor, info = torch.linalg.cholesky_ex(h)  # lower: H = LLᵀ
    if info == 0:
        factor, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(factor), upper=True)
    if info != 0:
        raise UserError(f"the calibration Hessian is not positive definite with dampening {dampening}; raise it")
    return factor


def sparsegpt_24(weight: Tensor, hessian: Tensor, dampening: float = 0.01, block_size: int = 128) -> Tensor:
    """``weight`` ``[out, in]`` pruned to 2:4 along ``in`` with the OBS update of the kept weights
    (see the module docstring); ``hessian`` is ``XᵀX`` ``[in, in]``. Returns a new tensor."""
    if block_size % GROUP:
        raise ValueError(f"block_size must be a multiple of {GROUP}")
    w = weight.detach().float().clone()  # the factor is computed in float64, the sweep runs in float32
    w[:, hessian.diagonal() == 0] = 0.0  # inputs that are always zero: their weights are free
    u = inverse_hessian_factor(hessian, dampening).to(w.device, torch.float32)
    cols = w.shape[1]
    keep = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, u_block = w[:, start:end], u[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            if i % GROUP == 0:
                saliency = block[:, i : i + GROUP] ** 2 / u_block.diagonal()[i : i + GROUP] ** 2
                keep[:, start + i : start + i + GROUP] = mask_24(saliency)
            col = block[:, i]
            pruned = torch.where(keep[:, start + i], col, torch.zeros_like(col))
            errors[:, i] = (col - pruned) / u_block[i, i]
            block[:, i:] -= errors[:, i : i + 1] * u_block[i : i + 1, i:]
            block[:, i] = pruned
        w[:, end:] -= errors @ u[start:end, end:]
    return (w * keep).to(weight.dtype)
