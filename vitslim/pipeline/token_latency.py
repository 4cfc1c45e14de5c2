"""Token-reduction schedule search under a *latency* budget measured in the target runtime.

Latency is not FLOPs: every reduction point adds ops whose cost depends on the runtime, the batch
and the CPU. So the budget is met by measurement: :func:`search_latency` runs the FLOPs-budget
search (:func:`~vitslim.compress.tokens.search.search_with`, fidelity on calibration images), exports
its best schedule and the unreduced model to ONNX and times both interleaved in the runtime
(:func:`~vitslim.runtimes.timing.time_variants`); it then moves the FLOPs budget by a secant step
on the measured latency ratios (the first step through ``(1, 1)``: no reduction, same latency) and
repeats, at most ``max_timings`` times. The schedule chosen is the most faithful one measured at or
under the budget (KL on the calibration images), else none: a :class:`~vitslim.errors.UserError`
saying how close the fastest came. Its config is explicit, so a recipe holding it reruns exactly.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitslim.compress.tokens import apply_token_reduction
from vitslim.compress.tokens.search import Candidate, Scorer, search_with
from vitslim.errors import UserError
from vitslim.evaluate.speedup import MIN_ROUNDS, speedup
from vitslim.export.onnx_export import export_onnx
from vitslim.runtimes import RUNTIMES, Deployed
from vitslim.runtimes.timing import time_variants

__all__ = ["LatencyTarget", "Measured", "LatencySearchResult", "next_flops_ratio", "search_latency"]

#: FLOPs budgets the secant steps stay within
FLOPS_RANGE = (0.05, 1.0)


@dataclass(frozen=True)
class LatencyTarget:
    """Where latency is measured: a registered runtime, batch size, threads, timed calls per model."""

    runtime: str
    batch: int = 1
    threads: int = 0
    runs: int = 3 * MIN_ROUNDS
    warmup: int = 2

    def describe(self) -> str:
        return f"{RUNTIMES[self.runtime].title} b{self.batch}, {self.threads or 'all'} threads"


@dataclass(frozen=True)
class Measured:
    """One timed schedule: the FLOPs budget it was searched under, its candidate, its p50 and the
    unreduced model's (ms, timed interleaved with it), their ratio and the speed-up verdict."""

    flops_budget: float
    candidate: Candidate
    p50_ms: float
    base_p50_ms: float
    verdict: str

    @property
    def latency_ratio(self) -> float:
        return self.p50_ms / self.base_p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops_budget": self.flops_budget,
            **self.candidate.to_dict(),
            "p50_ms": self.p50_ms,
            "base_p50_ms": self.base_p50_ms,
            "latency_ratio": self.latency_ratio,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class LatencySearchResult:
    """The chosen schedule and every one timed, in order."""

    method: str
    budget: float
    target: LatencyTarget
    images: int
    best: Measured
    timed: list[Measured] = field(default_factory=list)

    def summary(self) -> str:
        b = self.best
        return (
            f"{self.method} searched under latency <= {self.budget:g} of the unreduced model in "
            f"{self.target.describe()} on {self.images} calibration images ({len(self.timed)} schedules timed): "
            f"{b.candidate.config.describe()}; latency {b.latency_ratio:.3f} ({b.p50_ms:.1f} vs {b.base_p50_ms:.1f} "
            f"ms p50, {b.verdict}), FLOPs {b.candidate.flops_ratio:.3f}, KL {b.candidate.divergence:.4g}, "
            f"top-1 agreement {b.candidate.agreement:.2%}"
        )


def next_flops_ratio(points: Sequence[tuple[float, float]], target: float) -> float:
    """The FLOPs budget whose latency ratio a secant through measured ``(flops, latency)`` points
    puts at ``target``: through the last two of ``points``, or the last one and ``(1, 1)`` (no
    reduction); clamped to :data:`FLOPS_RANGE`. A flat secant halves the last FLOPs budget."""
    (f1, l1) = points[-1]
    (f0, l0) = points[-2] if len(points) > 1 and points[-2][0] != f1 else (1.0, 1.0)
    slope = (l1 - l0) / (f1 - f0) if f1 != f0 else 0.0
    guess = f1 + (target - l1) / slope if slope > 1e-6 else f1 / 2
    return min(max(guess, FLOPS_RANGE[0]), FLOPS_RANGE[1])


def _time_pair(
    model: nn.Module, candidate: Candidate, input_size: tuple[int, ...], target: LatencyTarget, folder: Path
) -> tuple[float, float, str]:
    """p50 of the reduced and the unreduced model in the target runtime, timed interleaved, and the verdict."""
    deployed = []
    for name, cfg in (("unreduced", None), ("reduced", candidate.config)):
        variant = copy.deepcopy(model) if cfg is None else apply_token_reduction(copy.deepcopy(model), cfg)
        path = export_onnx(variant, folder / f"{name}.onnx", input_size)
        deployed.append(Deployed(name, variant.eval(), path, tuple(input_size), torch.device("cpu")))
    latency = time_variants(
        deployed, [target.runtime], [target.batch], target.threads, target.warmup, target.runs, progress=False
    )
    base, reduced = latency["unreduced"][0], latency["reduced"][0]
    return reduced.p50_ms, base.p50_ms, speedup(base.to_dict(), reduced.to_dict()).verdict


def search_latency(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    method: str,
    latency_ratio: float,
    target: LatencyTarget,
    input_size: tuple[int, ...],
    *,
    max_evals: int = 16,
    max_timings: int = 4,
    class_token_last_block: bool = False,
    progress: Callable[[Measured], None] | None = None,
) -> LatencySearchResult:
    """Search a ``method`` schedule for ``model`` whose latency measured in ``target`` is at most
    ``latency_ratio`` of the unreduced model's (p50, timed interleaved), most faithful on the
    calibration ``batches``; at most ``max_timings`` FLOPs budgets are searched and timed."""
    if not 0.0 < latency_ratio < 1.0:
        raise UserError(f"latency_ratio must be in (0, 1), got {latency_ratio!r}")
    RUNTIMES[target.runtime].require()
    score = Scorer(model, batches)
    timed: list[Measured] = []
    flops = latency_ratio  # first guess: latency follows the block FLOPs
    with tempfile.TemporaryDirectory(prefix="vitslim-latency-") as tmp:
        for _ in range(max_timings):
            best = search_with(score, method, flops, max_evals, class_token_last_block, None).best
            measured = Measured(flops, best, *_time_pair(score.model, best, input_size, target, Path(tmp)))
            timed.append(measured)
            if progress is not None:
                progress(measured)
            if latency_ratio - 0.03 <= measured.latency_ratio <= latency_ratio:
                break  # under the budget, by less than the smallest speed-up a verdict claims
            points = [(m.candidate.flops_ratio, m.latency_ratio) for m in timed]
            nearest = sorted(points, key=lambda p: abs(p[1] - latency_ratio))[:2]
            flops = next_flops_ratio(nearest[::-1], latency_ratio)
            if any(abs(flops - m.flops_budget) < 1e-3 for m in timed):
                break  # the secant points at a budget already timed
    within = [m for m in timed if m.latency_ratio <= latency_ratio]
    if not within:
        fastest = min(timed, key=lambda m: m.latency_ratio)
        raise UserError(
            f"no {method} schedule measured at or under {latency_ratio:g} of the unreduced latency in "
            f"{target.describe()} in {len(timed)} tries; the fastest ({fastest.candidate.config.describe()}) "
            f"measured {fastest.latency_ratio:.3f}: allow more --timings or a larger --latency-ratio"
        )
    chosen = min(within, key=lambda m: m.candidate.divergence)
    return LatencySearchResult(method, latency_ratio, target, score.images, chosen, timed)
