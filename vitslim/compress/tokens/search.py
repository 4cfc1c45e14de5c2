"""Gradient-free search of where and how much to reduce tokens under a FLOPs budget, on
calibration images only (:func:`search_schedule`).

A candidate is a *shape*: for ToMe a weight per block (its share of the merges), for prune-merge
the reducing blocks, a weight per block (keep rate ``s ** weight``) and a merge rate. Each shape is
fitted to the budget: its overall strength is solved so that the blocks' estimated FLOPs
(:func:`~.schedule.estimate_flops`) are at most ``flops_ratio`` of the unreduced model's. It is
scored by fidelity to the unreduced model on the calibration images: the mean KL divergence of the
class probabilities (lower is better; feature models: 1 - cosine), top-1 agreement reported too.
The unreduced hidden states are computed once per block; a candidate runs from its first reducing
block only (:class:`~vitslim.compress.calibration.BlockRunner`).

Search: a few seeds (ToMe: constant, decreasing, merges delayed by 2 or 4 blocks; prune-merge:
evenly spaced points, shifted by one, two to four of them), then first-improvement hill climbing
over neighbours (a reducing block moved by one, a block's or a third's share raised or lowered,
the merge rate changed) until ``max_evals`` candidates are scored. The best config is explicit
(per-block r, or layers and keep rates), so a recipe that holds it reruns exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitslim.compress.calibration.block_cursor import BlockRunner

from .config import TokenConfigError, TokenMergeConfig, TokenPruneMergeConfig, TokenReductionConfig
from .patch import apply_token_reduction, remove_token_reduction
from .schedule import distribute_total, estimate_flops

__all__ = ["SEARCH_METHODS", "Candidate", "Scorer", "SearchResult", "fit_to_budget", "search_schedule", "search_with"]

#: reducers whose schedules :func:`search_schedule` searches
SEARCH_METHODS = ("tome", "prunemerge")

Shape = tuple  # tome: (weights,); prunemerge: (layers, weights, merge_rate)


@dataclass(frozen=True)
class Candidate:
    """One scored schedule: its config, block FLOPs ratio, KL (or 1 - cosine) and top-1 agreement."""

    config: TokenReductionConfig
    flops_ratio: float
    divergence: float
    agreement: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "description": self.config.describe(),
            "flops_ratio": self.flops_ratio,
            "divergence": self.divergence,
            "agreement": self.agreement,
        }


@dataclass(frozen=True)
class SearchResult:
    """The best candidate and every candidate scored, in order."""

    method: str
    budget: float
    images: int
    best: Candidate
    tried: list[Candidate] = field(default_factory=list)

    def summary(self) -> str:
        b = self.best
        return (
            f"{self.method} searched under block FLOPs <= {self.budget:g} on {self.images} calibration images "
            f"({len(self.tried)} candidates): {b.config.describe()}; FLOPs {b.flops_ratio:.3f}, "
            f"KL {b.divergence:.4g}, top-1 agreement {b.agreement:.2%}"
        )


# --------------------------------------------------------------------------- fitting a shape to the budget


def _ratio(model: nn.Module, cfg: TokenReductionConfig) -> float:
    return estimate_flops(model, cfg)["ratio"]


def _fit_tome(model: nn.Module, weights: Sequence[float], budget: float, last_block: bool) -> TokenMergeConfig:
    """The smallest total of merges spread by ``weights`` that meets ``budget`` (bisection)."""

    def cfg(total: int) -> TokenMergeConfig:
        return TokenMergeConfig(r=distribute_total(total, weights), class_token_last_block=last_block)

    lo, hi = 0, int(model.patch_embed.num_patches)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _ratio(model, cfg(mid)) <= budget else (mid + 1, hi)
    return cfg(lo)


def fit_to_budget(
    model: nn.Module, build: Callable[[float], TokenReductionConfig], budget: float
) -> TokenReductionConfig:
    """``build(s)`` for the largest ``s`` in (0, 1] (bisection) whose block FLOPs ratio on ``model``
    is at most ``budget``; ``build`` must reduce less as ``s`` grows (e.g. ``s`` a keep rate)."""
    lo, hi = 0.0, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _ratio(model, build(mid)) <= budget else (lo, mid)
    return build(max(lo, 1e-3))


def _fit_prunemerge(model: nn.Module, shape: Shape, budget: float, last_block: bool) -> TokenReductionConfig:
    """Keep rates ``s ** weight`` (3 decimals) at the shape's layers, ``s`` fitted to ``budget``."""
    layers, weights, merge_rate = shape

    def cfg(s: float) -> TokenPruneMergeConfig:
        rates = [max(round(s**w, 3), 0.001) for w in weights]
        return TokenPruneMergeConfig(layers, rates, merge_rate, class_token_last_block=last_block)

    return fit_to_budget(model, cfg, budget)


# --------------------------------------------------------------------------- seeds and neighbours


def _seeds(method: str, depth: int) -> list[Shape]:
    if method == "tome":
        return [
            (tuple([1.0] * depth),),
            (tuple(float(depth - 1 - i) for i in range(depth)),),
            *[(tuple(0.0 if i < d else 1.0 for i in range(depth)),) for d in (2, 4) if d < depth - 1],
        ]
    shapes = []
    for count, offset in ((3, 0), (3, -1), (3, 1), (2, 0), (4, 0)):
        spaced = {round(j * depth / (count + 1)) + offset for j in range(1, count + 1)}
        layers = tuple(sorted(i for i in spaced if 0 <= i < depth - 1))  # shallow models: fewer points
        if layers and all(s[0] != layers for s in shapes):
            shapes.append((layers, tuple([1.0] * len(layers)), 1.0))
    return shapes


def _neighbours(method: str, shape: Shape, depth: int) -> Iterator[Shape]:
    if method == "tome":
        (w,) = shape
        third = max(depth // 3, 1)
        for g in range(0, depth, third):
            for f in (1.5, 1 / 1.5):
                yield (tuple(v * f if g <= i < g + third else v for i, v in enumerate(w)),)
        return
    layers, w, merge = shape
    for j in range(len(layers)):
        for step in (-1, 1):
            moved = tuple(v + step if i == j else v for i, v in enumerate(layers))
            if 0 <= moved[j] < depth - 1 and len(set(moved)) == len(moved):
                yield (moved, w, merge)
        for f in (1.5, 1 / 1.5):
            yield (layers, tuple(v * f if i == j else v for i, v in enumerate(w)), merge)
    for m in (merge - 0.25, merge + 0.25):
        if 0.0 <= m <= 1.0:
            yield (layers, w, m)


# --------------------------------------------------------------------------- scoring


class Scorer:
    """Fidelity of reduced copies of ``model`` to the unreduced one on ``batches``."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
        self.model = copy.deepcopy(model).eval()
        remove_token_reduction(self.model)
        runner = BlockRunner(self.model)
        with torch.inference_mode():
            self.hidden = {0: [x for x, _ in runner.inputs(batches)]}
            self.reference = torch.cat([self._run(runner, 0, x, None) for x in self.hidden[0]])
        self.classifier = getattr(self.model, "num_classes", 0) > 0
        self.images = sum(int(b.shape[0]) for b in batches)

    def _run(self, runner: BlockRunner, start: int, x: torch.Tensor, stop: int | None) -> torch.Tensor:
        size = None
        for i in range(start, len(self.model.blocks) if stop is None else stop):
            x, size = runner.block(i, x, size)
        return x if stop is not None else runner.head(x, size)

    def _hidden(self, layer: int) -> list[torch.Tensor]:
        """Unreduced inputs of block ``layer`` (from the nearest cached block before it)."""
        if layer not in self.hidden:
            start = max(i for i in self.hidden if i <= layer)
            runner = BlockRunner(self.model)
            with torch.inference_mode():
                self.hidden[layer] = [self._run(runner, start, x, layer) for x in self.hidden[start]]
        return self.hidden[layer]

    def __call__(self, cfg: TokenReductionConfig) -> tuple[float, float]:
        layers = estimate_flops(self.model, cfg)["layers"]
        start = next((r["layer"] for r in layers if r["op"] is not None), len(layers) - 1)
        inputs = self._hidden(start)
        apply_token_reduction(self.model, cfg)
        try:
            runner = BlockRunner(self.model)
            with torch.inference_mode():
                out = torch.cat([self._run(runner, start, x, None) for x in inputs])
        finally:
            remove_token_reduction(self.model)
        ref = self.reference
        agreement = float((out.argmax(-1) == ref.argmax(-1)).float().mean()) if self.classifier else math.nan
        if self.classifier:
            logp_ref, logp = ref.log_softmax(-1), out.log_softmax(-1)
            divergence = float((logp_ref.exp() * (logp_ref - logp)).sum(-1).mean())
        else:
            divergence = float(1 - torch.nn.functional.cosine_similarity(out, ref, dim=-1).mean())
        return divergence, agreement


def search_schedule(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    method: str,
    flops_ratio: float,
    *,
    max_evals: int = 16,
    class_token_last_block: bool = False,
    progress: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """Search a ``method`` (:data:`SEARCH_METHODS`) schedule for ``model`` whose block FLOPs are at
    most ``flops_ratio`` of the unreduced model's, scored on the calibration ``batches``."""
    return search_with(Scorer(model, batches), method, flops_ratio, max_evals, class_token_last_block, progress)


def search_with(
    score: Scorer,
    method: str,
    flops_ratio: float,
    max_evals: int,
    class_token_last_block: bool,
    progress: Callable[[Candidate], None] | None,
) -> SearchResult:
    """:func:`search_schedule` with a :class:`Scorer` built once (several budgets on one model)."""
    if method not in SEARCH_METHODS:
        raise TokenConfigError(f"schedule search supports {', '.join(SEARCH_METHODS)}, not {method!r}")
    if not 0.0 < flops_ratio <= 1.0:
        raise TokenConfigError(f"flops_ratio must be in (0, 1], got {flops_ratio!r}")
    depth = len(score.model.blocks)

    def fit(shape: Shape) -> TokenReductionConfig:
        if method == "tome":
            return _fit_tome(score.model, shape[0], flops_ratio, class_token_last_block)
        return _fit_prunemerge(score.model, shape, flops_ratio, class_token_last_block)

    tried: list[Candidate] = []
    seen: dict[TokenReductionConfig, Candidate | None] = {}

    def evaluate(shape: Shape) -> Candidate | None:
        """The scored candidate of ``shape``; None when it cannot meet the budget or evals ran out."""
        cfg = fit(shape)
        if cfg in seen or len(tried) >= max_evals:
            return seen.get(cfg)
        ratio = _ratio(score.model, cfg)
        if ratio > flops_ratio:  # e.g. merges only in the last blocks, each capped at half its tokens
            seen[cfg] = None
            return None
        cand = Candidate(cfg, ratio, *score(cfg))
        seen[cfg] = cand
        tried.append(cand)
        if progress is not None:
            progress(cand)
        return cand

    scored = [(c, s) for s in _seeds(method, depth) if (c := evaluate(s)) is not None]
    if not scored:
        raise TokenConfigError(f"no {method} schedule fits this model (depth {depth})")
    best, best_shape = min(scored, key=lambda cs: cs[0].divergence)
    improved = True
    while improved and len(tried) < max_evals:
        improved = False
        for shape in _neighbours(method, best_shape, depth):
            cand = evaluate(shape)
            if cand is not None and cand.divergence < best.divergence:
                best, best_shape, improved = cand, shape, True
                break
    return SearchResult(method, flops_ratio, score.images, best, tried)
