"""Whether a measured speed-up is one: judged from latencies timed interleaved, round by round.

Runners timed together (:func:`~vitslim.evaluate.interleaved.time_interleaved`) share every
round's conditions, so round ``i`` of the baseline and round ``i`` of a variant form a pair. A
speed-up is claimed only when every pair agrees on its direction over at least
:data:`MIN_ROUNDS` rounds and the p50 ratio is at least :data:`MIN_EFFECT` away from 1; otherwise
it is *within noise* and said so. Two files with the same graph are never compared: any
difference between them is noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MIN_ROUNDS", "MIN_EFFECT", "Speedup", "speedup"]

#: rounds a speed-up needs before it is judged (all agreeing by chance: 2 * 2**-5 = 6% at most)
MIN_ROUNDS = 5
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
    elif low > 1 and ratio >= 1 + MIN_EFFECT:
        verdict = FASTER
    elif high < 1 and ratio <= 1 - MIN_EFFECT:
        verdict = SLOWER
    else:
        verdict = NOISE
    return Speedup(ratio, low, high, verdict)
