"""Whether a measured speed-up is one: judged from latencies timed interleaved, round by round.

Runners timed together (:func:`~vitslim.evaluate.interleaved.time_interleaved`) share every
round's conditions, so round ``i`` of the baseline and round ``i`` of a variant form a pair. A
speed-up (or slow-down) is claimed only when the pairs agree on its direction by a one-sided sign
test at level :data:`SIGN_LEVEL` (all 5 of 5 rounds, 9 of 10, 12 of 15, 21 of 30: more rounds
never make a claim harder) and the p50 ratio is at least :data:`MIN_EFFECT` away from 1;
otherwise it is *within noise* and said so. Two files with the same graph are never compared: any
difference between them is noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import comb
from typing import Any

__all__ = ["MIN_ROUNDS", "MIN_EFFECT", "SIGN_LEVEL", "Speedup", "agreeing_rounds_needed", "speedup"]

#: rounds a speed-up needs before it is judged
MIN_ROUNDS = 5
#: one-sided level of the sign test: all of MIN_ROUNDS rounds agreeing by chance (2**-5)
SIGN_LEVEL = 2.0**-MIN_ROUNDS
#: the smallest relative change called a speed-up or a slow-down
MIN_EFFECT = 0.03

FASTER, SLOWER, NOISE, SAME_GRAPH, UNJUDGED = "faster", "slower", "within noise", "same graph", "not judged"


@dataclass(frozen=True)
class Speedup:
    """The baseline's p50 over the variant's (``ratio``), the lowest and highest per-round ratio
    (None without paired rounds) and the ``verdict``: faster, slower, within noise, same graph (as
    the baseline), or not judged (fewer than :data:`MIN_ROUNDS` paired rounds)."""

    ratio: float
    low: float | None
    high: float | None
    verdict: str

    @property
    def claimed(self) -> bool:
        """Whether the measurement supports calling it faster or slower."""
        return self.verdict in (FASTER, SLOWER)

    def text(self, batch: int) -> str:
        """``1.52x (b1)``; ``0.66x (b16, slower)``; ``1.01x (b1, within noise: 0.95-1.07x)``..."""
        notes = {
            FASTER: "",
            SLOWER: ", slower",
            NOISE: f", within noise: {self.low:.2f}-{self.high:.2f}x" if self.low is not None else ", within noise",
            SAME_GRAPH: ", same graph as fp32: noise",
            UNJUDGED: f", fewer than {MIN_ROUNDS} rounds: not judged" if self.low is not None else ", not judged",
        }
        return f"{self.ratio:.2f}x (b{batch}{notes[self.verdict]})"


def speedup(base: dict[str, Any], entry: dict[str, Any], same_graph: bool = False) -> Speedup:
    """The speed-up of latency record ``entry`` over ``base`` (report latency dicts timed together;
    ``same_graph``: both ran the same graph, with other weights at most)."""
    ratio = base["p50_ms"] / entry["p50_ms"]
    rounds = base.get("round_p50_ms") or [], entry.get("round_p50_ms") or []
    ratios = [b / e for b, e in zip(*rounds, strict=False)]
    if not ratios:
        return Speedup(ratio, None, None, SAME_GRAPH if same_graph else UNJUDGED)
    low, high = min(ratios), max(ratios)
    if same_graph:
        verdict = SAME_GRAPH
    elif len(ratios) < MIN_ROUNDS or len(rounds[0]) != len(rounds[1]):
        verdict = UNJUDGED
    elif sum(r > 1 for r in ratios) >= agreeing_rounds_needed(len(ratios)) and ratio >= 1 + MIN_EFFECT:
        verdict = FASTER
    elif sum(r < 1 for r in ratios) >= agreeing_rounds_needed(len(ratios)) and ratio <= 1 - MIN_EFFECT:
        verdict = SLOWER
    else:
        verdict = NOISE
    return Speedup(ratio, low, high, verdict)


@cache
def agreeing_rounds_needed(rounds: int) -> int:
    """The fewest of ``rounds`` paired rounds that must agree on a direction for a claim: the
    smallest ``k`` with P(at least ``k`` of ``rounds`` fair coin flips) <= :data:`SIGN_LEVEL`."""
    tail = 0
    for k in range(rounds, -1, -1):
        tail += comb(rounds, k)
        if tail / 2**rounds > SIGN_LEVEL:
            return k + 1
    return 0
