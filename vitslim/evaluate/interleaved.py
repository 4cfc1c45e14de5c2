"""Timing several models side by side, interleaved, so that a shared machine's drifts fall on all
of them alike.

Every runner is warmed up, then each round times a few calls of every runner in turn (the order
rotates from round to round), after a short idle pause: ONNX Runtime's and OpenVINO's worker
threads spin for a while after a call and would otherwise slow the next runtime down.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["time_interleaved", "summarize", "runtime_call"]


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


def runtime_call(path: str | Path, runtime: str, threads: int, x: np.ndarray, precision: str = "default") -> Callable:
    """A no-argument call running the model at ``path`` on ``x`` in ``onnxruntime`` or ``openvino``
    (compiled for ``x``'s static batch, in ``precision``); the session is built here, once."""
    if runtime == "onnxruntime":
        from vitslim.evaluate.runtimes import ort_session

        session = ort_session(path, threads=threads)
        return functools.partial(session.run, None, {session.get_inputs()[0].name: x})
    if runtime == "openvino":
        from vitslim.evaluate.openvino_runtime import ov_compile

        request = ov_compile(path, threads, precision, batch=x.shape[0]).create_infer_request()
        return functools.partial(request.infer, {0: x})
    raise ValueError(f"no interleaved timing for runtime {runtime!r}")
