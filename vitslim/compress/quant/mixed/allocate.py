"""Greedy bit allocation (MPTQ-ViT style) on a sensitivity table, under an exact cost budget.

Every layer starts at its highest precision; each step lowers the one layer (weight or, for
bit-operations, input) whose next step down costs the least damage per unit of cost saved.
The damages are additive and made monotone in bits (fewer bits never hurt less), so the
sequence of states -- the *path* -- has a non-decreasing proxy score: a budget stops it at
the first state within the budget, and a larger budget never gets a worse score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vitslim.config import check_choice
from vitslim.errors import UserError

from .config import BUDGET_METRICS
from .sensitivity import LayerInfo, SensitivityTable

__all__ = ["FLOAT_BITS", "Ladder", "Costs", "GreedyPath", "ladders_for", "greedy_path", "pareto_sweep"]

#: Bits a float weight or activation counts for in every cost.
FLOAT_BITS = 32

Choice = tuple[int | None, int | None]  # (weight bits, activation bits); None: float


def _bits(b: int | None) -> int:
    return FLOAT_BITS if b is None else b


@dataclass(frozen=True)
class Ladder:
    """A layer's options from the most to the least precise, with their damages (same order)."""

    weight: tuple[int | None, ...]
    weight_damage: tuple[float, ...]
    act: tuple[int | None, ...] = (None,)
    act_damage: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if len(self.weight) != len(self.weight_damage) or len(self.act) != len(self.act_damage) or not self.weight:
            raise ValueError("a ladder needs one damage per option and at least one weight option")


def _monotone(bits: Sequence[int | None], damage: Mapping[int, float], float_damage: float = 0.0) -> tuple[float, ...]:
    """Damages along a precision-descending ladder, running maximum (fewer bits never hurt less)."""
    out, worst = [], 0.0
    for b in bits:
        worst = max(worst, float_damage if b is None else max(0.0, float(damage[b])))
        out.append(worst)
    return tuple(out)


def ladders_for(
    table: SensitivityTable,
    *,
    weight_bits: Sequence[int],
    act_bits: Mapping[str, Sequence[int | None]],
    allow_float: bool = False,
) -> dict[str, Ladder]:
    """Ladders of every layer in ``table``: weights at ``weight_bits`` (plus float first when
    ``allow_float``), inputs at ``act_bits[layer]`` (one fixed entry: not searched)."""
    out = {}
    w_opts: tuple[int | None, ...] = ((None,) if allow_float else ()) + tuple(sorted(set(weight_bits), reverse=True))
    for name in table.layers:
        a_opts = tuple(sorted(act_bits.get(name, (None,)), key=_bits, reverse=True))
        a_dmg = (0.0,) * len(a_opts)
        if len(a_opts) > 1:
            a_dmg = _monotone(a_opts, table.act.get(name, {}))
        out[name] = Ladder(w_opts, _monotone(w_opts, table.weight[name]), a_opts, a_dmg)
    return out


@dataclass(frozen=True)
class Costs:
    """Exact cost bookkeeping: planned layers' ``params``, output ``channels`` (one float32 scale
    each when quantized), ``macs`` per image, and the bytes of everything else (kept float)."""

    params: Mapping[str, int]
    channels: Mapping[str, int]
    macs: Mapping[str, int]
    other_bytes: int = 0

    @classmethod
    def from_table(cls, table: SensitivityTable, other_bytes: int = 0) -> Costs:
        layers: Mapping[str, LayerInfo] = table.layers
        return cls(
            {n: li.params for n, li in layers.items()},
            {n: li.channels for n, li in layers.items()},
            {n: li.macs for n, li in layers.items()},
            other_bytes,
        )

    def totals(self, choice: Mapping[str, Choice]) -> dict[str, float]:
        """``avg_weight_bits``, ``size_bytes`` and ``bops`` of a full choice (integers summed exactly)."""
        weight_bits = sum(self.params[n] * _bits(w) for n, (w, _a) in choice.items())
        scale_bits = sum(FLOAT_BITS * self.channels[n] for n, (w, _a) in choice.items() if w is not None)
        bops = sum(self.macs[n] * _bits(w) * _bits(a) for n, (w, a) in choice.items())
        return {
            "avg_weight_bits": weight_bits / sum(self.params[n] for n in choice),
            "size_bytes": (weight_bits + scale_bits) / 8 + self.other_bytes,
            "bops": float(bops),
        }


@dataclass
class GreedyPath:
    """The states of a greedy descent, most precise first, with their costs and proxy scores."""

    metric: str
    states: list[dict[str, Choice]] = field(default_factory=list)
    costs: list[dict[str, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def within(self, budget: float) -> int:
        """Index of the first (most precise) state whose cost is within ``budget``."""
        for i, c in enumerate(self.costs):
            if c[self.metric] <= budget:
                return i
        lowest = self.costs[-1][self.metric]
        raise UserError(
            f"budget {self.metric} <= {budget:g} is unreachable: the lowest precision allowed costs {lowest:g}"
        )


def _score(ladders: Mapping[str, Ladder], idx: Mapping[str, list[int]]) -> float:
    return sum(ladders[n].weight_damage[i[0]] + ladders[n].act_damage[i[1]] for n, i in idx.items())


def greedy_path(ladders: Mapping[str, Ladder], costs: Costs, metric: str) -> GreedyPath:
    """Lower one layer at a time, by the smallest damage per unit of ``metric`` saved, from every
    layer's first option down to every layer's last; returns every state passed through."""
    check_choice("budget metric", metric, BUDGET_METRICS)
    idx = {n: [0, 0] for n in ladders}
    path = GreedyPath(metric)

    def choice() -> dict[str, Choice]:
        return {n: (ladders[n].weight[i[0]], ladders[n].act[i[1]]) for n, i in idx.items()}

    def record() -> None:
        state = choice()
        path.states.append(state)
        path.costs.append(costs.totals(state))
        path.scores.append(_score(ladders, idx))

    def layer_cost(n: str, w: int | None, a: int | None) -> float:
        if metric == "bops":
            return costs.macs[n] * _bits(w) * _bits(a)
        scales = 0 if w is None or metric == "avg_weight_bits" else FLOAT_BITS * costs.channels[n]
        return costs.params[n] * _bits(w) + scales

    record()
    while True:
        best: tuple[float, int, str, int] | None = None
        for order, (n, (wi, ai)) in enumerate(idx.items()):
            lad = ladders[n]
            now = layer_cost(n, lad.weight[wi], lad.act[ai])
            for axis, (opts, dmg, i) in enumerate(((lad.weight, lad.weight_damage, wi), (lad.act, lad.act_damage, ai))):
                if i + 1 >= len(opts):
                    continue
                nxt = [wi, ai]
                nxt[axis] = i + 1
                saved = now - layer_cost(n, lad.weight[nxt[0]], lad.act[nxt[1]])
                if saved <= 0:
                    continue
                key = ((dmg[i + 1] - dmg[i]) / saved, order * 2 + axis, n, axis)
                if best is None or key[:2] < best[:2]:
                    best = key
        if best is None:
            return path
        idx[best[2]][best[3]] += 1
        record()


def pareto_sweep(path: GreedyPath, every: int = 1) -> list[dict[str, float]]:
    """The path as data: per state (every ``every``-th, and the last) its costs and proxy score."""
    keep = sorted(set(range(0, len(path.states), max(1, every))) | {len(path.states) - 1})
    return [{"step": i, **path.costs[i], "score": path.scores[i]} for i in keep]
