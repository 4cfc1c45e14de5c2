"""Latency benchmarks: warm-up, then timed runs; median/p90/p99 and images per second."""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 30
MIN_RUNS = 5
DEFAULT_MAX_SECONDS = 20.0


@dataclass(frozen=True)
class Latency:
    """Timing of one runtime at one batch size and thread count, in milliseconds per batch."""

    runtime: str
    batch: int
    threads: int
    warmup: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    #: where it ran: a PyTorch device (``cpu``, ``cuda:0``) or an ONNX Runtime execution provider
    device: str = "cpu"
    #: the fastest tenth of the calls took at most this long (with p90: the spread of the calls)
    p10_ms: float | None = None
    #: timed interleaved with other runners: this runner's p50 in each round, in round order (the
    #: rounds of runners timed together pair up: :mod:`vitslim.evaluate.speedup`)
    round_p50_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        record = asdict(self)
        record["round_p50_ms"] = list(self.round_p50_ms)
        return record


def latency_of(
    times: list[float], runtime: str, batch: int, threads: int, warmup: int, calls: int, device: str
) -> Latency:
    """The :class:`Latency` of one runner's interleaved ``times``
    (:func:`~vitslim.evaluate.interleaved.time_interleaved`, ``calls`` per round)."""
    p10, p50, p90, p99 = np.percentile(times, [10, 50, 90, 99])
    rounds = tuple(float(np.median(times[i : i + calls])) for i in range(0, len(times), calls))
    return Latency(
        runtime,
        batch,
        threads,
        warmup,
        len(times),
        float(p50),
        float(p90),
        float(p99),
        statistics.fmean(times),
        batch * 1000.0 / float(p50),
        device,
        float(p10),
        rounds,
    )


def resolve_threads(threads: int) -> int:
    """``threads`` if positive, else all the machine's logical cores."""
    return threads if threads > 0 else (os.cpu_count() or 1)


def time_calls(
    fn: Callable[[], object],
    runtime: str,
    batch: int,
    threads: int,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    device: str = "cpu",
) -> Latency:
    """Call ``fn`` ``warmup`` times untimed, then up to ``runs`` times (at least MIN_RUNS, stopping
    once ``max_seconds`` of timed calls have passed) and summarise the per-call times."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < MIN_RUNS or time.perf_counter() < budget_end):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    # timed one after another, not in rounds beside other runners: no per-round figures to pair
    return replace(latency_of(times, runtime, batch, threads, warmup, 1, device), round_p50_ms=())


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Temporarily set PyTorch's intra-op thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bench_ort(
    path: str,
    input_size: tuple[int, ...],
    batch_sizes: list[int],
    threads: int = 0,
    progress: bool = True,
    providers: list | None = None,
    **timing: float,
) -> list[Latency]:
    """ONNX Runtime latency of the model at ``path`` for each batch size (CPU execution provider
    unless ``providers`` say otherwise; each entry names the provider that ran)."""
    from vitslim.evaluate.runtimes import ort_session

    threads = resolve_threads(threads)
    session = ort_session(path, threads=threads, providers=providers)
    provider = session.get_providers()[0]
    name = session.get_inputs()[0].name
    results = []
    for batch in tqdm(batch_sizes, desc="bench onnxruntime", unit="batch size", disable=not progress, leave=False):
        feed = {name: np.random.default_rng(0).standard_normal((batch, *input_size), dtype=np.float32)}
        run = functools.partial(session.run, None, feed)
        results.append(time_calls(run, "onnxruntime", batch, threads, device=provider, **timing))
    return results


def latency_table(results: list[Latency]) -> list[str]:
    """A fixed-width text table of latency results, with its header line."""
    header = (
        f"{'runtime':>12} {'device':>11} {'batch':>5} {'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'img/s':>8}"
    )
    return [header] + [
        f"{r.runtime:>12} {r.device:>11} {r.batch:>5} {r.threads:>7} {r.p50_ms:9.2f} {r.p90_ms:9.2f} "
        f"{r.p99_ms:9.2f} {r.images_per_s:8.1f}"
        for r in results
    ]
