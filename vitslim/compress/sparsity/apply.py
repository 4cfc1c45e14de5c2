"""``sparsify_``: the one verb of 2:4 sparsity (select layers, calibrate, prune in place)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitslim.compress.calibration.batches import calibration_subset
from vitslim.compress.calibration.block_cursor import BlockCursor
from vitslim.compress.calibration.hessian import calibration_stages, collect_hessians, relative_output_error
from vitslim.compress.vit.patching import QUANT_PATCH, has_patch
from vitslim.errors import UserError

from .config import SparsityConfig
from .methods import SparsityMethod, get_sparsity_method
from .pattern import zero_fraction
from .selection import select_layers

__all__ = ["sparsify_"]

log = logging.getLogger(__name__)


def _prune(layer: nn.Linear, hessian: Tensor | None, method: SparsityMethod, cfg: SparsityConfig) -> dict[str, Any]:
    """Prune one layer in place; its report entry."""
    start = time.perf_counter()
    dense = layer.weight.detach().clone()
    sparse = method.prune(dense, hessian, cfg.dampening, cfg.block_size)
    layer.weight.copy_(sparse.to(layer.weight.dtype))
    return {
        "method": method.name,
        "shape": list(dense.shape),
        "sparsity": zero_fraction(layer.weight),
        "relative_error": None if hessian is None else relative_output_error(dense, layer.weight, hessian),
        "seconds": time.perf_counter() - start,
    }


def sparsify_(
    model: nn.Module,
    cfg: SparsityConfig | Mapping[str, Any],
    data: Tensor | Iterable | None = None,
    *,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Make the selected Linear weights of ``model`` 2:4 sparse in place, along their input dimension.

    ``data``: calibration images (a tensor ``[B, 3, H, W]`` or a DataLoader of ``(images, labels)``),
    required by ``wanda`` and ``sparsegpt``; with it, layers are calibrated block by block on the
    already-sparsified model (:mod:`vitslim.compress.calibration`) and each layer's report has its relative output
    error against its dense weight on its calibration inputs (``None`` without data). Run it before
    quantization (symmetric weight quantizers keep the zeros). Deterministic for a given ``seed``
    (which picks the ``cfg.images`` images when more are given).

    Returns the report: ``layers`` (per layer: method, shape, sparsity, relative_error, seconds),
    ``skipped`` (layer: reason), the config, seed, images used, overall sparsity of the selected
    layers, calibration and total seconds.
    """
    cfg = cfg if isinstance(cfg, SparsityConfig) else SparsityConfig.from_dict(cfg)
    if has_patch(model, QUANT_PATCH):
        raise UserError("model is already quantized: apply 2:4 sparsity before quantization")
    method = get_sparsity_method(cfg.method)
    if method.needs_data and data is None:
        raise UserError(f"sparsity method {cfg.method!r} needs calibration images (data); 'magnitude' does not")
    selection = select_layers(model, cfg)
    start = time.perf_counter()
    layers: dict[str, dict[str, Any]] = {}
    images = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if data is None:
                for name, layer in tqdm(
                    selection.layers.items(), desc="sparsifying", disable=not progress, leave=False
                ):
                    layers[name] = _prune(layer, None, method, cfg)
            else:
                batches = calibration_subset(data, cfg.images, seed, next(model.parameters()).device)
                images = sum(b.shape[0] for b in batches)
                stages = calibration_stages(model, selection.layers, cfg.sequential)
                cursor = BlockCursor(model, batches, [stop for stop, _names in stages])
                total = len(stages) * len(batches) + len(selection.layers)
                with tqdm(total=total, desc="sparsifying", disable=not progress, leave=False) as bar:
                    for stop_after, names in stages:
                        with collect_hessians({n: selection.layers[n] for n in names}) as hessians:
                            cursor.run(stop_after, bar)
                        for name in names:
                            hessian = hessians.pop(name, None)
                            if hessian is None and method.needs_data:
                                raise UserError(
                                    f"layer {name!r} got no calibration input (unused in forward); exclude it"
                                )
                            layers[name] = _prune(selection.layers[name], hessian, method, cfg)
                            bar.update(1)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    weights = [layer.weight for layer in selection.layers.values()]
    zeros = sum(zero_fraction(w) * w.numel() for w in weights)
    errors = [r["relative_error"] for r in layers.values() if r["relative_error"] is not None]
    mean_error = f", mean relative output error {sum(errors) / len(errors):.4f}" if errors else ""
    log.info("2:4 %s on %d layers (%.1f s)%s", method.name, len(layers), seconds, mean_error)
    return {
        "method": method.name,
        "config": cfg.to_dict(),
        "seed": seed,
        "images": images,
        "sparsity": zeros / sum(w.numel() for w in weights),
        "layers": {name: layers[name] for name in selection.layers},
        "skipped": selection.skipped,
        "calibration_seconds": seconds - sum(r["seconds"] for r in layers.values()),
        "seconds": seconds,
    }
