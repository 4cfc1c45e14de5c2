"""``plan_mixed_precision``: sensitivities, then the greedy path, then a budget or an accuracy bound."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitslim.compress.quant.apply import quantize_
from vitslim.compress.quant.config import QuantConfig
from vitslim.errors import UserError

from .allocate import Costs, GreedyPath, greedy_path, ladders_for
from .config import MixedPrecisionConfig
from .plan import BitPlan, LayerBits
from .sensitivity import SensitivityTable, measure_sensitivity, planned_layers

__all__ = [
    "DEFAULT_CACHE",
    "default_cache_dir",
    "images_and_labels",
    "build_path",
    "plan_from_state",
    "plan_mixed_precision",
    "measure_drop",
]

#: Sentinel: the default sensitivity cache folder (``<vitslim cache>/sensitivity``).
DEFAULT_CACHE = "default"


def default_cache_dir() -> Path:
    from vitslim.models.demo import cache_dir

    return cache_dir() / "sensitivity"


def images_and_labels(data: Tensor | Iterable) -> tuple[Tensor, Tensor | None]:
    """All images of ``data`` (a batch tensor, or an iterable of batches or ``(images, labels)``)
    concatenated, and the labels when every batch has them."""
    items = [data] if isinstance(data, Tensor) else list(data)
    xs, ys = [], []
    for item in items:
        x, y = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise UserError(f"calibration data must be image batches [B, 3, H, W], got {type(x).__name__}")
        xs.append(x.float())
        ys.append(y if isinstance(y, Tensor) else None)
    if not xs or sum(x.shape[0] for x in xs) == 0:
        raise UserError("no calibration images")
    labels = None if any(y is None for y in ys) else torch.cat([y.reshape(-1).long() for y in ys])
    return torch.cat(xs), labels


def _act_options(model: nn.Module, base: QuantConfig, mp: MixedPrecisionConfig) -> dict[str, tuple[int | None, ...]]:
    """Per layer the input bits searched (bit-operations budget) or the base config's, fixed."""
    out = {}
    for name, (_w, a_site) in planned_layers(model, base).items():
        spec = None if a_site is None else base.spec_for(a_site)
        out[name] = (None,) if spec is None else (tuple(mp.act_bits) if mp.searches_activations else (spec.bits,))
    return out


def _other_bytes(model: nn.Module, table: SensitivityTable) -> int:
    """Bytes of the model state outside the planned weights (kept float)."""
    planned = {f"{n}.weight" for n in table.layers}
    return sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in planned)


def build_path(
    model: nn.Module, base: QuantConfig, mp: MixedPrecisionConfig, table: SensitivityTable, *, allow_float: bool = False
) -> GreedyPath:
    """The greedy descent for ``mp``'s cost (``avg_weight_bits`` under an accuracy bound)."""
    metric = mp.budget.metric if mp.budget is not None else "avg_weight_bits"
    ladders = ladders_for(
        table, weight_bits=mp.weight_bits, act_bits=_act_options(model, base, mp), allow_float=allow_float
    )
    return greedy_path(ladders, Costs.from_table(table, _other_bytes(model, table)), metric)


def plan_from_state(
    base: QuantConfig,
    table: SensitivityTable,
    state: Mapping[str, tuple[int | None, int | None]],
    meta: Mapping[str, Any] | None = None,
) -> BitPlan:
    """A :class:`BitPlan` for one state of a path (input quantizers: the base config's)."""
    layers = {}
    for name, (w, a) in state.items():
        kind = table.layers[name].input_kind
        layers[name] = LayerBits(w, a if kind is not None else None, None, kind)
    return BitPlan(layers, meta or {})


def measure_drop(
    model: nn.Module,
    cfg: QuantConfig,
    calib: Tensor,
    held: Tensor,
    labels: Tensor | None,
    reference: Tensor,
    *,
    seed: int = 0,
    quantize_options: Mapping[str, Any] | None = None,
) -> float:
    """Accuracy points lost by quantizing a copy of ``model`` with ``cfg`` (calibrated on ``calib``):
    top-1 on ``held`` when labelled, else 100 - agreement with the float ``reference`` logits."""
    qmodel = quantize_(copy.deepcopy(model), cfg, [calib], progress=False, seed=seed, **dict(quantize_options or {}))
    with torch.no_grad():
        pred = qmodel(held).argmax(-1)
    ref_pred = reference.argmax(-1)
    if labels is not None:
        return 100.0 * float((ref_pred == labels).float().mean() - (pred == labels).float().mean())
    return 100.0 * float(1.0 - (pred == ref_pred).float().mean())


def _holdout(
    mp: MixedPrecisionConfig, calib_data: Tensor | Iterable, eval_data: Tensor | Iterable | None, device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Calibration images, and for ``max_drop`` the images (and labels) its drop is measured on:
    ``eval_data``, or else the last ``holdout`` fraction of the calibration images."""
    images, labels = images_and_labels(calib_data)
    images = images.to(device)
    if mp.max_drop is None:
        return images, None, None
    if eval_data is not None:
        held, held_labels = images_and_labels(eval_data)
    else:
        n_held = int(round(mp.holdout * images.shape[0]))
        if n_held < 1 or n_held >= images.shape[0]:
            raise UserError(f"max_drop needs eval data or more calibration images ({images.shape[0]}) to hold out")
        held, held_labels = images[-n_held:], None if labels is None else labels[-n_held:]
        images = images[:-n_held]
    return images, held.to(device), None if held_labels is None else held_labels.to(device)


def _sensitivity_meta(table: SensitivityTable, seconds: float, images: int) -> dict[str, Any]:
    """What a plan records about the sensitivities it was based on."""
    return {
        "method": table.method,
        "cache": table.meta.get("cache"),
        "seconds": seconds,
        "images": images,
        # weight widths run through the model; the others are estimates (fisher: all are)
        "measured_bits": [] if table.method == "fisher" else list(table.meta["measure_bits"]),
        "weight": table.to_dict()["weight"],
    }


def plan_mixed_precision(
    model: nn.Module,
    base_cfg: QuantConfig,
    mp_cfg: MixedPrecisionConfig | Mapping[str, Any],
    calib_data: Tensor | Iterable,
    *,
    eval_data: Tensor | Iterable | None = None,
    progress: bool = True,
    seed: int = 0,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    quantize_options: Mapping[str, Any] | None = None,
) -> BitPlan:
    """Allocate bits per layer of a float timm ViT (``model`` is not modified).

    Budget mode: the greedy path's first state within ``mp_cfg.budget``. Accuracy mode
    (``max_drop``): the cheapest state of the path (by average weight bits; with ``allow_float``
    it starts from all-float, so the most sensitive layers are the last to leave float) whose
    measured drop is within the bound -- binary search on the path, each probe a ``quantize_``
    (``quantize_options``) of a copy calibrated on the calibration images and evaluated on
    ``eval_data`` or, when absent, on the last ``holdout`` fraction of ``calib_data``.
    ``cache_dir``: sensitivity cache (``None``: off). Apply the result with
    ``quantize_(model, plan.to_quant_config(base_cfg), calib_data)``.
    """
    start = time.perf_counter()
    mp = mp_cfg if isinstance(mp_cfg, MixedPrecisionConfig) else MixedPrecisionConfig.from_dict(mp_cfg)
    images, held, held_labels = _holdout(mp, calib_data, eval_data, next(model.parameters()).device)
    cache = default_cache_dir() if cache_dir == DEFAULT_CACHE else cache_dir
    was_training = model.training
    model.eval()
    try:
        table = measure_sensitivity(
            model,
            base_cfg,
            images[: mp.images],
            method=mp.sensitivity,
            weight_bits=mp.weight_bits,
            act_bits=mp.act_bits if mp.searches_activations else (),
            measure_bits=mp.anchors,
            cache_dir=cache,
            progress=progress,
            seed=seed,
        )
        meta: dict[str, Any] = {
            "config": mp.to_dict(),
            "sensitivity": _sensitivity_meta(table, time.perf_counter() - start, int(min(mp.images, images.shape[0]))),
        }
        if mp.budget is not None:
            path = build_path(model, base_cfg, mp, table)
            i = path.within(mp.budget.value)
        else:
            path = build_path(model, base_cfg, mp, table, allow_float=mp.allow_float)
            i, probes = _search_drop(
                model,
                base_cfg,
                path,
                table,
                images,
                held,
                held_labels,
                mp.max_drop,
                seed=seed,
                quantize_options=quantize_options,
                progress=progress,
            )
            meta["drop"] = {
                "probes": {str(k): v for k, v in sorted(probes.items())},
                "measured": probes[i],
                "within_bound": probes[i] <= mp.max_drop,
                "labelled": held_labels is not None,
                "held_out_images": int(held.shape[0]),
            }
    finally:
        model.train(was_training)
    meta.update(step=i, steps=len(path.states), costs=path.costs[i], score=path.scores[i])
    meta["seconds"] = time.perf_counter() - start
    return plan_from_state(base_cfg, table, path.states[i], meta)


def _search_drop(
    model, base, path: GreedyPath, table, calib, held, labels, max_drop, *, seed, quantize_options, progress
) -> tuple[int, dict[int, float]]:
    """Largest path index whose drop is within ``max_drop`` (binary search, drop taken as
    non-decreasing along the path); warns and returns 0 when even the first state fails."""
    with torch.no_grad():
        reference = model(held)
    probes: dict[int, float] = {}

    def ok(i: int) -> bool:
        if i not in probes:
            cfg = plan_from_state(base, table, path.states[i]).to_quant_config(base)
            probes[i] = measure_drop(
                model, cfg, calib, held, labels, reference, seed=seed, quantize_options=quantize_options
            )
            if progress:
                tqdm.write(
                    f"mixed precision: step {i}/{len(path.states) - 1} "
                    f"({path.costs[i]['avg_weight_bits']:.2f} avg bits): drop {probes[i]:.2f} pt"
                )
        return probes[i] <= max_drop

    last = len(path.states) - 1
    if not ok(0):
        warnings.warn(
            f"no plan keeps the drop within {max_drop} pt (the most precise one loses {probes[0]:.2f} pt)", stacklevel=3
        )
        return 0, probes
    if ok(last):
        return last, probes
    lo, hi = 0, last
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo, probes
