"""Timing several models side by side, interleaved, so that a shared machine's drifts fall on all
of them alike.

Every runner is warmed up, then each round times a few calls of every runner in turn (the order
rotates from round to round), after a short idle pause: ONNX Runtime's and OpenVINO's worker
threads spin for a while after a call and would otherwise slow the next runtime down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from vitslim.evaluate.speedup import MIN_ROUNDS

__all__ = ["PAUSE", "time_interleaved", "summarize", "runtime_call"]

K = TypeVar("K", bound=Hashable)
#: idle seconds before each runner's calls in a round (other runtimes' worker threads stop spinning)
PAUSE = 0.2


def time_interleaved(
    runners: Mapping[K, Callable[[], object]],
    rounds: int = 5,
    calls: int = 3,
    warmup: int = 2,
    pause: float = PAUSE,
    progress: bool = True,
    max_seconds: float | None = None,
    min_rounds: int = MIN_ROUNDS,
) -> dict[K, list[float]]:
    """Per runner name, the milliseconds of its ``rounds * calls`` timed calls, round after round.
    ``max_seconds``: stop after the round in which that much time has passed, once ``min_rounds``
    rounds (or all ``rounds``, when fewer) are done."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[K, list[float]] = {name: [] for name in names}
    end = None if max_seconds is None else time.perf_counter() + max_seconds
    for index in tqdm(range(rounds), desc="interleaved timing", unit="round", disable=not progress, leave=False):
        if end is not None and index >= min_rounds and time.perf_counter() > end:
            break
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


def runtime_call(path: str | Path, runtime: str, threads: int, x: np.ndarray, precision: str = "default") -> Callable:
    """A no-argument call running the file at ``path`` on random inputs shaped like ``x`` in a
    registered runtime (:mod:`vitslim.runtimes`) that runs files, in ``precision`` (``f32``: the
    exact-precision run where the runtime has one); the session is built here, once."""
    import torch

    from vitslim.runtimes import RUNTIMES, Deployed

    path = Path(path)
    deployed = Deployed(path.stem, None, path, tuple(x.shape[1:]), torch.device("cpu"), baseline=precision != "default")
    timers = RUNTIMES[runtime].timers(deployed, x.shape[0], threads)
    return timers.get("" if precision == "default" else precision, timers[""]).call
