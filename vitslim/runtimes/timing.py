"""The latency of every variant of a run in every measured runtime, timed side by side.

Per batch size, every (variant, runtime) call is built first, then all are timed interleaved
(:func:`~vitslim.evaluate.interleaved.time_interleaved`): each round times a few calls of each in
turn, so a drift of the machine (other work starting, the CPU clocking down) falls on all of them
alike, and the rounds pair up for the summary's noise verdict (:mod:`vitslim.evaluate.speedup`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vitslim.evaluate.interleaved import PAUSE, time_interleaved
from vitslim.evaluate.latency import DEFAULT_MAX_SECONDS, Latency, latency_of, resolve_threads
from vitslim.evaluate.speedup import MIN_ROUNDS
from vitslim.runtimes import RUNTIMES, Deployed

__all__ = ["time_variants"]

#: calls per round at batch 1 when ``runs`` allow :data:`MIN_ROUNDS` rounds of them (larger batches: one)
CALLS_AT_BATCH_1 = 3


def rounds_of(runs: int, batch: int) -> tuple[int, int]:
    """``(rounds, calls per round)`` for ``runs`` timed calls per runner: as many rounds as can be,
    at least :data:`MIN_ROUNDS` (so a speed-up can be judged) once ``runs`` allows it."""
    calls = 1 if batch > 1 else max(1, min(CALLS_AT_BATCH_1, runs // MIN_ROUNDS))
    return math.ceil(runs / calls), calls


def time_variants(
    deployed: Sequence[Deployed],
    runtimes: Sequence[str],
    batch_sizes: Sequence[int],
    threads: int,
    warmup: int,
    runs: int,
    progress: bool = True,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> dict[str, list[Latency]]:
    """Per variant name, its latency in each of ``runtimes`` (in that order; a runtime's extra modes
    after its deployed one) at each batch size: ``runs`` timed calls per (variant, runtime) after
    ``warmup`` (:func:`rounds_of`; fewer once ``max_seconds`` per call site have passed, but at
    least :data:`MIN_ROUNDS` rounds)."""
    threads = resolve_threads(threads)
    order = {runtime: i for i, runtime in enumerate(runtimes)}
    entries: dict[str, dict[tuple, Latency]] = {d.name: {} for d in deployed}
    for batch in batch_sizes:
        sites = {}
        for d in deployed:
            for runtime in runtimes:
                for mode, timed in RUNTIMES[runtime].timers(d, batch, threads).items():
                    sites[(d.name, runtime, mode)] = timed
        rounds, calls = rounds_of(runs, batch)
        times = time_interleaved(
            {key: timed.call for key, timed in sites.items()},
            rounds=rounds,
            calls=calls,
            warmup=warmup,
            pause=PAUSE if rounds >= MIN_ROUNDS else 0.0,  # too few rounds to judge: no need to settle
            progress=progress,
            max_seconds=max_seconds * len(sites),
        )
        for (name, runtime, mode), timed in sites.items():
            entry = latency_of(times[(name, runtime, mode)], runtime, batch, threads, warmup, calls, timed.device)
            entries[name][(order[runtime], mode, batch)] = entry
    return {name: [by_key[k] for k in sorted(by_key)] for name, by_key in entries.items()}
