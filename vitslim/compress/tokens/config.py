"""Token-reduction configs: plain frozen dataclasses (torchao style) that recipes build from YAML.

>>> token_config_from_dict({"method": "tome", "r": 8}).describe()
'ToMe r=8 constant'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from vitslim.config import check_choice, check_fields
from vitslim.errors import UserError

__all__ = [
    "MERGE_SCHEDULES",
    "TokenConfigError",
    "TokenMergeConfig",
    "TokenPruneConfig",
    "TokenPruneMergeConfig",
    "TokenReductionConfig",
    "TOKEN_REDUCERS",
    "token_config_from_dict",
]

MERGE_SCHEDULES = ("constant", "decreasing")


class TokenConfigError(UserError, ValueError):
    """An impossible token-reduction setting (bad schedule, layer out of range, ...)."""


def _int_list(values: Sequence[Any], what: str) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or int(v) != v or int(v) < 0:
            raise TokenConfigError(f"{what} must hold non-negative integers, got {v!r}")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True)
class TokenMergeConfig:
    """ToMe-style merging: remove ``r`` tokens per block by bipartite soft matching.

    - ``r``: tokens merged per layer (an int), or an explicit per-layer list.
    - ``schedule``: ``"constant"`` (r in every layer), ``"decreasing"`` (linear from about 2r
      in the first layer to 0 in the last, the same total r * depth), or an explicit list.
    - ``keep_ratio``: instead of r, merge ``round((1 - keep_ratio) * patch_tokens)`` tokens in
      total, spread over the layers by the schedule's shape (so about ``keep_ratio`` of the
      patch tokens are left after the last block).
    - ``flops_ratio``: instead of r, the smallest total merge count (spread the same way) whose
      estimated attention + MLP MACs are at most this fraction of the unreduced model's.
    - ``proportional_attention``: add log(size) to the attention logits.
    - ``class_token_last_block``: see :data:`LAST_BLOCK_DOC`.

    r is clamped per layer so that a layer never merges more than half its patch tokens.
    """

    r: int | Sequence[int] = 8
    schedule: str | Sequence[int] = "constant"
    keep_ratio: float | None = None
    flops_ratio: float | None = None
    proportional_attention: bool = True
    class_token_last_block: bool = False
    method: ClassVar[str] = "tome"

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str):
            object.__setattr__(self, "schedule", _int_list(self.schedule, "schedule"))
        elif self.schedule not in MERGE_SCHEDULES + ("list",):
            raise TokenConfigError(f"unknown merge schedule {self.schedule!r}; use one of {MERGE_SCHEDULES} or a list")
        r = _int_list(self.r, "r") if isinstance(self.r, (list, tuple)) else _int_list([self.r], "r")[0]
        object.__setattr__(self, "r", r)
        if self.schedule == "list" and not isinstance(self.r, tuple):
            raise TokenConfigError("schedule 'list' needs r as a per-layer list")
        explicit = isinstance(self.schedule, tuple) or isinstance(self.r, tuple)
        if self.keep_ratio is not None and self.flops_ratio is not None:
            raise TokenConfigError("give keep_ratio or flops_ratio, not both")
        for name in ("keep_ratio", "flops_ratio"):
            v = getattr(self, name)
            if v is not None:
                if explicit:
                    raise TokenConfigError(f"{name} cannot be combined with an explicit per-layer r list")
                if not 0.0 < float(v) <= 1.0:
                    raise TokenConfigError(f"{name} must be in (0, 1], got {v!r}")
                object.__setattr__(self, name, float(v))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("r", "schedule"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return {"method": self.method, **d}

    def describe(self) -> str:
        """A short human description, e.g. ``ToMe r=8 constant``."""
        if self.keep_ratio is not None:
            text = f"ToMe keep ratio {self.keep_ratio:g} {self.schedule}"
        elif self.flops_ratio is not None:
            text = f"ToMe FLOPs ratio {self.flops_ratio:g} {self.schedule}"
        elif isinstance(self.r, tuple) or isinstance(self.schedule, tuple):
            text = f"ToMe r per layer {list(self.r if isinstance(self.r, tuple) else self.schedule)}"
        else:
            text = f"ToMe r={self.r} {self.schedule}"
        return text + _suffix(self)


@dataclass(frozen=True)
class TokenPruneConfig:
    """EViT-style pruning: at each block in ``layers`` (0-based) keep ``ceil(keep_rate * t)``
    patch tokens by class-token attention and fuse the rest into one token
    (``class_token_last_block``: see :data:`LAST_BLOCK_DOC`)."""

    keep_rate: float = 0.7
    layers: Sequence[int] = (3, 6, 9)
    proportional_attention: bool = True
    class_token_last_block: bool = False
    method: ClassVar[str] = "evit"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.keep_rate) <= 1.0:
            raise TokenConfigError(f"keep_rate must be in (0, 1], got {self.keep_rate!r}")
        object.__setattr__(self, "keep_rate", float(self.keep_rate))
        object.__setattr__(self, "layers", tuple(sorted(set(_int_list(self.layers, "layers")))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(d["layers"])
        return {"method": self.method, **d}

    def describe(self) -> str:
        """A short human description, e.g. ``EViT keep 0.7 at layers 3,6,9``."""
        layers = ",".join(map(str, self.layers))
        return f"EViT keep {self.keep_rate:g} at layers {layers}" + _suffix(self)


@dataclass(frozen=True)
class TokenPruneMergeConfig:
    """Prune-and-merge (PPT / DiffRate style) at a few blocks (:mod:`.prune_merge`).

    - ``layers``: the reducing blocks (0-based).
    - ``keep_rate``: fraction of the patch tokens entering a reducing block that it keeps
      (``ceil``), one number or one per entry of ``layers``.
    - ``merge_rate``: fraction of the removed tokens (the most important of them) merged into their
      most similar kept token; the rest are pruned. 1: merge all, 0: prune all.
    - ``value_norm``: weight each head's class attention by the token's value norm (PPT).
    - ``proportional_attention``: add log(size) to the attention logits.
    - ``class_token_last_block``: see :data:`LAST_BLOCK_DOC`.
    """

    layers: Sequence[int] = (3, 6, 9)
    keep_rate: float | Sequence[float] = 0.7
    merge_rate: float = 1.0
    value_norm: bool = True
    proportional_attention: bool = True
    class_token_last_block: bool = False
    method: ClassVar[str] = "prunemerge"

    def __post_init__(self) -> None:
        layers = _int_list(self.layers, "layers")
        if len(set(layers)) != len(layers):
            raise TokenConfigError(f"layers must not repeat, got {list(layers)}")
        rates = self.keep_rate if isinstance(self.keep_rate, (list, tuple)) else [self.keep_rate] * len(layers)
        if len(rates) != len(layers):
            raise TokenConfigError(f"keep_rate has {len(rates)} entries for {len(layers)} layers")
        for v in (*rates, self.merge_rate):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TokenConfigError(f"keep_rate and merge_rate must be numbers, got {v!r}")
        if not all(0.0 < float(v) <= 1.0 for v in rates):
            raise TokenConfigError(f"keep_rate must be in (0, 1], got {self.keep_rate!r}")
        if not 0.0 <= float(self.merge_rate) <= 1.0:
            raise TokenConfigError(f"merge_rate must be in [0, 1], got {self.merge_rate!r}")
        ordered = sorted(zip(layers, (float(v) for v in rates), strict=True))
        object.__setattr__(self, "layers", tuple(i for i, _ in ordered))
        keep = tuple(v for _, v in ordered)
        object.__setattr__(self, "keep_rate", keep[0] if len(set(keep)) == 1 else keep)
        object.__setattr__(self, "merge_rate", float(self.merge_rate))

    def keep_rates(self) -> tuple[float, ...]:
        """The keep rate of each entry of ``layers``."""
        return self.keep_rate if isinstance(self.keep_rate, tuple) else (self.keep_rate,) * len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(d["layers"])
        if isinstance(d["keep_rate"], tuple):
            d["keep_rate"] = list(d["keep_rate"])
        return {"method": self.method, **d}

    def describe(self) -> str:
        """A short human description, e.g. ``prune-merge keep 0.7 (merge 100%) at layers 3,6,9``."""
        rates = self.keep_rate if isinstance(self.keep_rate, tuple) else (self.keep_rate,)
        keep = "/".join(f"{v:g}" for v in rates)
        layers = ",".join(map(str, self.layers))
        norm = "" if self.value_norm else ", no value norm"
        return f"prune-merge keep {keep} (merge {self.merge_rate:.0%}) at layers {layers}{norm}" + _suffix(self)


TokenReductionConfig = TokenMergeConfig | TokenPruneConfig | TokenPruneMergeConfig

#: string-keyed registry of token reducers (recipes name them by ``method``)
TOKEN_REDUCERS: Mapping[str, type] = {
    "tome": TokenMergeConfig,
    "evit": TokenPruneConfig,
    "prunemerge": TokenPruneMergeConfig,
}

#: what ``class_token_last_block`` does, shared by every reducer's config
LAST_BLOCK_DOC = (
    "in a class-token-pooled classifier compute the last block's attention output and MLP for the class "
    "(and distillation) token only: the same logits for less work; other heads are refused"
)


def token_config_from_dict(d: Mapping[str, Any]) -> TokenReductionConfig:
    """Build a config from a recipe mapping: ``{"method": "tome"|"evit"|"prunemerge", ...fields}`` (unknown
    methods and keys, and values of the wrong type, are :class:`TokenConfigError`)."""
    try:
        method = check_choice("method", d.get("method", "tome"), TOKEN_REDUCERS)
        check_fields(TOKEN_REDUCERS[method], d, extra=("method",))
    except UserError as exc:
        raise TokenConfigError(str(exc)) from None
    return TOKEN_REDUCERS[method](**{k: v for k, v in d.items() if k != "method"})


def _suffix(cfg: Any) -> str:
    text = "" if cfg.proportional_attention else ", no proportional attention"
    return text + (", last block class token only" if cfg.class_token_last_block else "")
