"""Timing several models side by side, interleaved, so that a shared machine's drifts fall on all
of them alike.

Every runner is warmed up, then each round times a few calls of every runner in turn (the order
rotates from round to round), after a short idle pause: ONNX Runtime's and OpenVINO's worker
threads spin for a while after a call and would otherwise slow the next runtime down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
from tqdm import tqdm

__all__ = ["time_interleaved", "summarize"]


def time_interleaved(
    runners: Mapping[str, Callable[[], object]],
    rounds: int = 5,
    calls: int = 3,
    warmup: int = 2,
    pause: float = 0.2,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Per runner name, the milliseconds of its ``rounds * calls`` timed calls."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in tqdm(range(rounds), desc="interleaved timing", unit="round", disable=not progress, leave=False):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)
            for _ in range(calls):
                start = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """p50/p90 and mean of a runner's call times (ms)."""
    p50, p90 = np.percentile(times, [50, 90])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "mean_ms": float(np.mean(times)), "runs": len(times)}
