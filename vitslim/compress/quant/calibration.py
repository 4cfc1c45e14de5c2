"""Calibration: collect what each site needs on calibration images, then search its quantizer.

1. Weight sites are calibrated on the weights alone (the quantizer's own search, per channel).
2. One pass over the images (``sequential=True``: one pass per block, stopping after it, with
   the blocks before it already quantized) collects, per activation site, a seeded subsample of
   about ``samples`` tokens (Linear inputs: token rows; attention: all operands of a few whole
   images, since a query row needs every key) plus the running per-channel extremes.
3. Each activation site's quantizer parameters are searched by the error of the layer's
   *output* (the Linear output with its quantized weight, or the attention output), MSE or
   cosine, over candidates the quantizer defines:

   * ``minmax`` / ``percentile``: statistics only (uniform: the observed or percentile range;
     the unsigned quantizers, which have no such statistic, run their own value search);
   * ``mse``: grid search -- every candidate ranked by the error of the values themselves
     (cheap), the ``keep`` best re-scored by the output error;
   * ``progressive``: coarse-to-fine search on the candidate grid in the spirit of AdaLog's
     FPCS -- a coarse sub-grid scored by output error, the ``keep // 2`` (at least 2) best
     kept, their neighbours at half the stride scored, until the stride is 1.

The samples are taken by :mod:`.samplers`, the candidates searched by :mod:`.search`. Everything
is deterministic for a given ``seed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitslim.compress.calibration.batches import run_until
from vitslim.compress.vit.attention import TAP, explicit_attention
from vitslim.config import check_choice

from .placement import QuantPoint, point_owner, quant_points
from .samplers import AttentionSampler, RowSampler
from .search import OBJECTIVES, SEARCHES, search_quantizer

__all__ = ["calibrate_model"]


@contextlib.contextmanager
def _enabled_only(points: Iterable[QuantPoint]) -> Iterator[None]:
    points = list(points)
    flags = [p.enabled for p in points]
    for p in points:
        p.enabled = True
    try:
        yield
    finally:
        for p, flag in zip(points, flags, strict=True):
            p.enabled = flag


def _stage_of(site: str, depth: int) -> int:
    """Block index of a site; -1 before the blocks (patch embedding), ``depth`` after them."""
    parts = site.split(".")
    if parts[0] == "blocks":
        return int(parts[1])
    return -1 if parts[0] == "patch_embed" else depth


def _problems(owner: nn.Module, points: Sequence[QuantPoint], sampler: RowSampler | AttentionSampler):
    """Per point of one owner module: (search values, evaluate(), float reference output)."""
    if isinstance(sampler, RowSampler):  # a Linear's input, scored with its quantized weight
        (point,) = points
        x = sampler.rows()
        weight = owner._modules.get("weight_quant")
        w_hat = owner.weight if weight is None else weight.quantizer(owner.weight)  # computed once

        def evaluate() -> Tensor:
            with _enabled_only([point]):
                return F.linear(point(x), w_hat, owner.bias)

        yield point, sampler.values(), evaluate, F.linear(x, owner.weight, owner.bias)
        return
    q, k, v, bias = sampler.operands()
    reference, probs = explicit_attention(owner, q, k, v, bias)
    for point in points:
        slot = point.site.rpartition(".")[2]
        if slot == "softmax":
            values = probs
        else:
            stored = {"q": q, "k": k, "v": v}[slot]
            values = torch.cat([stored.reshape(-1, stored.shape[-1]), sampler.extremes[slot].rows()])

        def evaluate(point: QuantPoint = point, slot: str = slot) -> Tensor:
            with _enabled_only([point]):  # the map / v operand alone need no new softmax
                if slot == "softmax":
                    return point(probs) @ v
                if slot == "v":
                    return probs @ point(v)
                return explicit_attention(owner, q, k, v, bias)[0]

        yield point, values, evaluate, reference


def _calibrate_stage(
    model: nn.Module,
    points: Mapping[str, QuantPoint],
    batches: Sequence[Tensor],
    stop_after: nn.Module | None,
    *,
    search: str,
    objective: str,
    samples: int,
    keep: int,
    seed: int,
    bar,
) -> dict[str, float]:
    """Collect the data of ``points`` in one pass, then search each point's quantizer."""
    images = sum(b.shape[0] for b in batches)
    groups: dict[str, list[QuantPoint]] = {}
    for name, point in points.items():
        groups.setdefault(name.rpartition(".")[0], []).append(point)
    owners = {name: model.get_submodule(name) for name in groups}
    samplers: dict[str, RowSampler | AttentionSampler] = {}
    handles = []
    try:
        for i, (name, owner) in enumerate(owners.items()):
            if isinstance(owner, nn.Linear):
                s = samplers[name] = RowSampler(samples, images, seed * 7919 + i)
                handles.append(owner.register_forward_pre_hook(lambda _m, args, s=s: s.add(args[0])))
            else:
                samplers[name] = AttentionSampler(samples, images, seed * 7919 + i)
                setattr(owner, TAP, samplers[name])
        run_until(model, batches, stop_after, bar)
    finally:
        for h in handles:
            h.remove()
        for owner in owners.values():
            owner.__dict__.pop(TAP, None)

    errors = {}
    for name, owner in owners.items():
        for point, values, evaluate, reference in _problems(owner, groups[name], samplers.pop(name)):
            errors[point.site] = search_quantizer(
                point,
                values,
                evaluate,
                reference,
                search=search,
                objective=objective,
                keep=keep,
                seed=seed + len(errors),
            )
            bar.update(1)
    return errors


def calibrate_model(
    model: nn.Module,
    batches: Sequence[Tensor],
    *,
    search: str = "mse",
    objective: str = "mse",
    sequential: bool = False,
    samples: int = 2048,
    keep: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Calibrate every point of a patched model (see the module docstring) and enable them.

    Returns the output error (``objective``) of each activation site's chosen parameters.
    """
    check_choice("search", search, SEARCHES)
    check_choice("objective", objective, OBJECTIVES)
    points = quant_points(model)
    depth = len(model.blocks)
    weights = {n: p for n, p in points.items() if n.endswith(".weight")}
    activations = {n: p for n, p in points.items() if n not in weights}
    for p in weights.values():
        p.quantizer.calibrate(point_owner(model, p).weight.detach())
    if sequential:
        stages = [(i, {n: p for n, p in activations.items() if _stage_of(n, depth) == i}) for i in range(depth + 1)]
        stages = [(i, s) for i, s in stages if s]
    else:
        stages = [(depth, activations)] if activations else []
    total = len(stages) * len(batches) + len(activations)
    errors: dict[str, float] = {}
    for p in points.values():
        p.enabled = False
    try:
        with torch.no_grad(), tqdm(total=total, desc="calibrating", disable=not progress, leave=False) as bar:
            for i, stage in stages:
                if sequential:  # everything before this block is quantized
                    for n, p in points.items():
                        p.enabled = _stage_of(n, depth) < i
                stop = model.blocks[i] if i < depth else None
                errors.update(
                    _calibrate_stage(
                        model,
                        stage,
                        batches,
                        stop,
                        search=search,
                        objective=objective,
                        samples=samples,
                        keep=keep,
                        seed=seed,
                        bar=bar,
                    )
                )
    finally:
        for p in points.values():
            p.enabled = True
    return errors
