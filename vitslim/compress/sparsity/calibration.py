"""Calibration for the data-driven methods: layer-input Hessians ``H = XᵀX``, block by block.

Sequential (the default): layers inside ``model.blocks[i]`` are calibrated in stage ``i``: the
images run through the model up to the end of block ``i`` with every earlier block already
sparsified, so later layers see the inputs of the sparse model (SparseGPT's sequential scheme).
All layers of one block share a pass over the still-dense block. Layers outside the blocks (a
head, when selected) get a last pass through the whole model. Running the full model (stopped
after the block) rather than blocks in isolation keeps whatever patches sit on the model (token
reduction) in effect.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from vitslim.compress.quant.calibration import calibration_batches, run_until

__all__ = ["calibration_subset", "calibration_stages", "collect_hessians", "run_until", "relative_output_error"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def calibration_subset(data: Tensor | Iterable, samples: int, seed: int, device: torch.device) -> list[Tensor]:
    """Image batches of ``data`` (tensor or DataLoader of ``(images, labels)``) on ``device``; at most
    ``samples`` images, a subset drawn with ``seed`` (batches of the first batch's size) when more."""
    batches = calibration_batches(data, device)
    total = sum(b.shape[0] for b in batches)
    if total <= samples:
        return batches
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    return list(torch.cat(batches)[pick.to(device)].split(batches[0].shape[0]))


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
    """While active, every forward of ``layers`` adds ``XᵀX`` of its input (float32, tokens as rows)
    to the yielded dict, keyed by layer name."""
    hessians: dict[str, Tensor] = {}

    def accumulate(name: str, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if name not in hessians:
            hessians[name] = torch.zeros(rows.shape[1], rows.shape[1], device=rows.device)
        hessians[name].addmm_(rows.T, rows)

    handles = [
        layer.register_forward_pre_hook(lambda _m, args, name=name: accumulate(name, args[0]))
        for name, layer in layers.items()
    ]
    try:
        yield hessians
    finally:
        for handle in handles:
            handle.remove()


def relative_output_error(dense: Tensor, sparse: Tensor, hessian: Tensor) -> float | None:
    """``‖(W_sparse - W_dense) X‖_F / ‖W_dense X‖_F`` on the calibration inputs, from ``H = XᵀX``
    (bias excluded; None when the dense output is zero)."""
    h = hessian.double()
    delta, w = (sparse - dense).double(), dense.double()
    num, den = ((delta @ h) * delta).sum(), ((w @ h) * w).sum()
    return float((num / den).clamp_min(0).sqrt()) if den > 0 else None
