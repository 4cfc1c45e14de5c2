"""Layer-input Hessians ``H = XᵀX`` and the Optimal Brain Surgeon column sweep built on them,
shared by SparseGPT pruning (``sparsity``) and GPTQ rounding (``quant``).

Calibration is sequential: layers inside ``model.blocks[i]`` are calibrated in stage ``i``, the
images running through the model up to the end of block ``i`` with every earlier block already
changed, so later layers see the inputs of the compressed model (SparseGPT's and GPTQ's
sequential scheme). All layers of one block share a pass. Layers outside the blocks (a head)
get a last pass through the whole model. The blocks run with whatever patches sit on them (token
reduction, activation quantizers), each on the kept outputs of the block before it
(:class:`~vitslim.compress.calibration.block_cursor.BlockCursor`; the whole model up to the block when the
blocks are not a plain chain).

The sweep (Frantar & Alistarh, SparseGPT 2023 / GPTQ 2022): with ``U`` the upper Cholesky
factor of ``(H + λI)⁻¹``, the columns of ``W`` are replaced left to right (pruned or rounded);
each replaced weight's error ``(w - r) / U_cc`` is spread over the not yet processed columns
along ``U_{c, c:}``, inside a block of columns at once and lazily to the columns after it.
``λ = dampening · mean(diag H)``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from vitslim.errors import UserError

__all__ = [
    "calibration_stages",
    "collect_hessians",
    "inverse_hessian_factor",
    "obs_sweep",
    "relative_output_error",
]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")

#: ``replace(column, rest, diag)``: the new values of weight column ``column`` given ``rest``
#: (the current block's columns from ``column`` on, already updated) and ``diag`` (``U``'s
#: diagonal on those columns).
Replace = Callable[[int, Tensor, Tensor], Tensor]


def calibration_stages(
    model: nn.Module, names: Iterable[str], sequential: bool = True
) -> list[tuple[nn.Module | None, list[str]]]:
    """``(module to stop after, layer names)`` per stage: one per block holding selected layers, in
    block order, then ``(None, the rest)`` for layers outside the blocks (whole-model pass).
    Not ``sequential``: one whole-model pass for all layers."""
    if not sequential:
        return [(None, list(names))]
    blocks = getattr(model, "blocks", None)
    per_block: dict[int, list[str]] = {}
    rest = []
    for name in names:
        found = _BLOCK.match(name)
        if isinstance(blocks, nn.Sequential | nn.ModuleList) and found and int(found[1]) < len(blocks):
            per_block.setdefault(int(found[1]), []).append(name)
        else:
            rest.append(name)
    stages: list[tuple[nn.Module | None, list[str]]] = [(blocks[i], per_block[i]) for i in sorted(per_block)]
    return stages + ([(None, rest)] if rest else [])


@contextlib.contextmanager
def collect_hessians(layers: Mapping[str, nn.Linear]) -> Iterator[dict[str, Tensor]]:
    """While active, every forward of ``layers`` adds ``XᵀX`` of the input its matmul sees (after
    the layer's ``input_quant`` point when it has one; float32, tokens as rows) to the yielded
    dict, keyed by layer name."""
    hessians: dict[str, Tensor] = {}

    def accumulate(name: str, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if name not in hessians:
            hessians[name] = torch.zeros(rows.shape[1], rows.shape[1], device=rows.device)
        hessians[name].addmm_(rows.T, rows)

    handles = []
    for name, layer in layers.items():
        point = layer._modules.get("input_quant")
        if point is None:
            handles.append(layer.register_forward_pre_hook(lambda _m, args, name=name: accumulate(name, args[0])))
        else:  # the quantized input, as the layer's own forward computes it (not computed again)
            handles.append(point.register_forward_hook(lambda _m, _args, out, name=name: accumulate(name, out)))
    try:
        yield hessians
    finally:
        for handle in handles:
            handle.remove()


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


def obs_sweep(weight: Tensor, hessian: Tensor, replace: Replace, dampening: float, block_size: int) -> Tensor:
    """``weight`` ``[out, in]`` with every column replaced by ``replace`` left to right, the error
    of each replacement compensated on the later columns (see the module docstring); ``hessian``
    is ``XᵀX`` ``[in, in]``. Weights of inputs that are always zero are zeroed first (they are
    free). Returns a new float32 tensor."""
    w = weight.detach().float().clone()  # the factor is computed in float64, the sweep runs in float32
    w[:, hessian.diagonal() == 0] = 0.0
    u = inverse_hessian_factor(hessian, dampening).to(w.device, torch.float32)
    cols = w.shape[1]
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, u_block = w[:, start:end], u[start:end, start:end]
        diag = u_block.diagonal()
        errors = torch.zeros_like(block)
        for i in range(end - start):
            col = block[:, i]
            new = replace(start + i, block[:, i:], diag[i:])
            errors[:, i] = (col - new) / u_block[i, i]
            block[:, i:] -= errors[:, i : i + 1] * u_block[i : i + 1, i:]
            block[:, i] = new
        w[:, end:] -= errors @ u[start:end, end:]
    return w


def relative_output_error(dense: Tensor, changed: Tensor, hessian: Tensor) -> float | None:
    """``‖(W_changed - W_dense) X‖_F / ‖W_dense X‖_F`` on the calibration inputs, from ``H = XᵀX``
    (bias excluded; None when the dense output is zero)."""
    h = hessian.double()
    delta, w = (changed - dense).double(), dense.double()
    num, den = ((delta @ h) * delta).sum(), ((w @ h) * w).sum()
    return float((num / den).clamp_min(0).sqrt()) if den > 0 else None
