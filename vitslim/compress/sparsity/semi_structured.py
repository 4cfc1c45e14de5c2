"""GPU execution of 2:4 weights: ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt / CUTLASS).

Only NVIDIA GPUs with sparse tensor cores (compute capability 8.0+) have these kernels, for
float16/bfloat16 (and int8) weights whose shape meets the backend's minimum-block constraints;
the input activations are padded by torch as needed. On CPU 2:4 weights run as dense ones.
"""

from __future__ import annotations

import torch
from torch import nn

from vitslim.errors import UserError

from .pattern import holds_24
from .selection import matches

__all__ = ["SEMI_STRUCTURED_DTYPES", "to_semi_structured_"]

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def to_semi_structured_(
    model: nn.Module, patterns: list[str] | None = None, *, dtype: torch.dtype = torch.float16
) -> dict[str, str]:
    """Move ``model`` to the current CUDA device in ``dtype`` and swap the weights of its 2:4 Linear
    layers for semi-structured sparse tensors, in place.

    ``patterns``: fnmatch patterns of the layers to convert (default: every Linear holding the
    2:4 pattern; a matched layer without it is a :class:`UserError`, as the compressed format
    would silently drop weights). Returns per Linear ``"semi-structured"`` or why it stays dense
    (no 2:4 pattern, a shape the kernel does not support). Without CUDA: :class:`UserError`.
    """
    if not torch.cuda.is_available():
        raise UserError(
            "2:4 semi-structured kernels need an NVIDIA CUDA GPU (compute capability 8.0+), and none is "
            "available; the sparsified model still runs with dense kernels (no 2:4 speed-up on CPU)"
        )
    if dtype not in SEMI_STRUCTURED_DTYPES:
        raise UserError(f"semi-structured sparse Linear layers run in float16 or bfloat16, not {dtype}")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = {n: m for n, m in linears.items() if patterns is None or matches(n, patterns)}
    if patterns is not None:
        missing = [n for n, m in chosen.items() if not holds_24(m.weight)]
        if missing:
            raise UserError(f"layers without the 2:4 pattern cannot be semi-structured: {', '.join(missing)}")
    model.to(device=torch.device("cuda"), dtype=dtype)
    status = {}
    for name, layer in linears.items():
        if name not in chosen:
            status[name] = "not selected"
        elif not holds_24(layer.weight):
            status[name] = "dense: no 2:4 pattern"
        else:
            try:
                sparse = torch.sparse.to_sparse_semi_structured(layer.weight.detach().contiguous())
            except RuntimeError as exc:
                status[name] = f"dense: {str(exc).strip().splitlines()[0]}"
            else:
                layer.weight = nn.Parameter(sparse, requires_grad=False)
                status[name] = "semi-structured"
    return status
