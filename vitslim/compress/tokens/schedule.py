"""Token-reduction configs, per-layer schedules, token counts and FLOP estimates.

Configs are plain dataclasses (torchao style) so recipes can build them from YAML:
``TokenMergeConfig(**d)`` / ``TokenPruneConfig(**d)`` or :func:`token_config_from_dict`.

Counting convention used everywhere here: block ``i`` attends over ``tokens_in`` tokens,
reduces between attention and MLP, and its MLP runs on ``tokens_out`` tokens, which are
also the next block's ``tokens_in``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from vitslim.errors import UserError

from .merge import max_merge
from .prune import evit_tokens_out

__all__ = [
    "TokenConfigError",
    "TokenMergeConfig",
    "TokenPruneConfig",
    "TokenReductionConfig",
    "TOKEN_REDUCERS",
    "token_config_from_dict",
    "LayerReduction",
    "BlockCost",
    "merge_schedule",
    "resolve_layer_ops",
    "simulate_layers",
    "block_costs",
    "model_num_tokens",
    "tokens_per_layer",
    "estimate_flops",
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


@dataclass
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

    r is clamped per layer so that a layer never merges more than half its patch tokens.
    """

    r: int | Sequence[int] = 8
    schedule: str | Sequence[int] = "constant"
    keep_ratio: float | None = None
    flops_ratio: float | None = None
    proportional_attention: bool = True
    method: ClassVar[str] = "tome"

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str):
            self.schedule = _int_list(self.schedule, "schedule")
        elif self.schedule not in MERGE_SCHEDULES + ("list",):
            raise TokenConfigError(f"unknown merge schedule {self.schedule!r}; use one of {MERGE_SCHEDULES} or a list")
        if isinstance(self.r, (list, tuple)):
            self.r = _int_list(self.r, "r")
        else:
            self.r = _int_list([self.r], "r")[0]
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
                setattr(self, name, float(v))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("r", "schedule"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return {"method": self.method, **d}


@dataclass
class TokenPruneConfig:
    """EViT-style pruning: at each block in ``layers`` (0-based) keep ``ceil(keep_rate * t)``
    patch tokens by class-token attention and fuse the rest into one token."""

    keep_rate: float = 0.7
    layers: Sequence[int] = (3, 6, 9)
    proportional_attention: bool = True
    method: ClassVar[str] = "evit"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.keep_rate) <= 1.0:
            raise TokenConfigError(f"keep_rate must be in (0, 1], got {self.keep_rate!r}")
        self.keep_rate = float(self.keep_rate)
        self.layers = tuple(sorted(set(_int_list(self.layers, "layers"))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(d["layers"])
        return {"method": self.method, **d}


TokenReductionConfig = TokenMergeConfig | TokenPruneConfig

#: string-keyed registry of token reducers (recipes name them by ``method``)
TOKEN_REDUCERS: Mapping[str, type] = {"tome": TokenMergeConfig, "evit": TokenPruneConfig}


def token_config_from_dict(d: Mapping[str, Any]) -> TokenMergeConfig | TokenPruneConfig:
    """Build a config from a recipe mapping: ``{"method": "tome"|"evit", ...fields}``."""
    d = dict(d)
    method = d.pop("method", "tome")
    if method not in TOKEN_REDUCERS:
        raise TokenConfigError(f"unknown token reducer {method!r}; known: {sorted(TOKEN_REDUCERS)}")
    try:
        return TOKEN_REDUCERS[method](**d)
    except TypeError as e:
        raise TokenConfigError(f"bad {method} config: {e}") from None


@dataclass(frozen=True)
class LayerReduction:
    """What one block does: ``op`` is "merge", "prune" or None; ``amount`` the requested
    r (merge) or keep rate (prune); the token counts are after clamping."""

    layer: int
    op: str | None
    amount: float
    tokens_in: int
    tokens_out: int

    @property
    def removed(self) -> int:
        return self.tokens_in - self.tokens_out


def _distribute(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    s = float(sum(weights))
    if total <= 0 or s <= 0:
        return [0] * len(weights)
    raw = [total * w / s for w in weights]
    out = [math.floor(v) for v in raw]
    rest = total - sum(out)
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))[:rest]:
        out[i] += 1
    return out


def _shape_weights(schedule: str, depth: int) -> list[float]:
    if schedule == "decreasing" and depth > 1:
        return [float(depth - 1 - i) for i in range(depth)]
    return [1.0] * depth


def merge_schedule(cfg: TokenMergeConfig, depth: int, num_patch_tokens: int, total: int | None = None) -> list[int]:
    """Requested r per layer (before clamping) for ``cfg``; ``total`` overrides the total merges."""
    explicit = cfg.schedule if isinstance(cfg.schedule, tuple) else cfg.r if isinstance(cfg.r, tuple) else None
    if explicit is not None:
        if len(explicit) != depth:
            raise TokenConfigError(f"per-layer r list has {len(explicit)} entries for a model of depth {depth}")
        return list(explicit)
    if total is None:
        if cfg.keep_ratio is not None:
            total = int(round((1.0 - cfg.keep_ratio) * num_patch_tokens))
        else:
            total = int(cfg.r) * depth
    return _distribute(total, _shape_weights(str(cfg.schedule), depth))


def simulate_layers(
    ops: Sequence[tuple[str | None, float]], num_tokens: int, num_prefix_tokens: int = 1
) -> list[LayerReduction]:
    """Token counts through the blocks for per-layer ``ops`` (the same clamping as at run time)."""
    out = []
    n = int(num_tokens)
    p = int(num_prefix_tokens)
    for i, (op, amount) in enumerate(ops):
        if op == "merge":
            n_out = n - min(int(amount), max_merge(n, p))
        elif op == "prune":
            n_out = evit_tokens_out(n, p, amount)
        else:
            n_out = n
        out.append(LayerReduction(i, op, amount, n, n_out))
        n = n_out
    return out


@dataclass(frozen=True)
class BlockCost:
    """Per-block sizes for MAC counting (taken from the model: robust to swapped Linear modules)."""

    embed_dim: int
    attn_dim: int  # heads * head_dim
    head_dim: int
    attn_linear_macs: int  # per token: qkv + proj (+ gate)
    mlp_linear_macs: int  # per token: fc1 + fc2 (or whatever Linear layers the MLP has)


def _linear_macs(module: Any) -> int:
    """MACs per token of the innermost Linear-like layers in ``module`` (a quantized Linear counts:
    its children are quantizers, not layers)."""
    total = 0
    for m in module.modules():
        if _is_linear(m) and not any(_is_linear(c) for c in m.children()):
            total += int(m.in_features) * int(m.out_features)
    return total


def _is_linear(module: Any) -> bool:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def block_costs(model: Any) -> list[BlockCost]:
    """A :class:`BlockCost` per transformer block of a timm VisionTransformer."""
    costs = []
    embed_dim = int(getattr(model, "embed_dim", 0) or model.num_features)
    for blk in model.blocks:
        attn = blk.attn
        attn_dim = int(getattr(attn, "attn_dim", attn.num_heads * attn.head_dim))
        costs.append(BlockCost(embed_dim, attn_dim, int(attn.head_dim), _linear_macs(attn), _linear_macs(blk.mlp)))
    return costs


def _layer_macs(cost: BlockCost, red: LayerReduction, num_prefix: int) -> dict[str, int]:
    n, n_out = red.tokens_in, red.tokens_out
    attn = n * cost.attn_linear_macs + 2 * n * n * cost.attn_dim  # projections, QK^T and AV
    mlp = n_out * cost.mlp_linear_macs
    reduce = 0
    if red.removed > 0:
        t = n - num_prefix
        na, nb = (t + 1) // 2, t // 2
        if red.op == "merge":  # similarity matrix + one-hot merge matmul
            reduce = na * nb * cost.head_dim + red.removed * nb * (cost.embed_dim + 1)
        elif red.op == "prune":  # weighted fusion of the dropped tokens
            reduce = (red.removed + 1) * cost.embed_dim
    return {"attn_macs": attn, "mlp_macs": mlp, "reduce_macs": reduce, "macs": attn + mlp + reduce}


def _total_macs(costs: Sequence[BlockCost], reds: Sequence[LayerReduction], num_prefix: int) -> int:
    return sum(_layer_macs(c, r, num_prefix)["macs"] for c, r in zip(costs, reds, strict=True))


def resolve_layer_ops(
    cfg: TokenMergeConfig | TokenPruneConfig | None,
    num_tokens: int,
    depth: int,
    num_prefix_tokens: int = 1,
    costs: Sequence[BlockCost] | None = None,
) -> list[tuple[str | None, float]]:
    """Per-layer ``(op, amount)`` for ``cfg``: ``("merge", r)``, ``("prune", keep_rate)`` or ``(None, 0)``.

    ``costs`` (from :func:`block_costs`) is needed only for ``flops_ratio``.
    """
    if cfg is None:
        return [(None, 0)] * depth
    t = int(num_tokens) - int(num_prefix_tokens)
    if isinstance(cfg, TokenPruneConfig):
        bad = [i for i in cfg.layers if i >= depth]
        if bad:
            raise TokenConfigError(f"prune layers {bad} are out of range for a model of depth {depth}")
        return [("prune", cfg.keep_rate) if i in cfg.layers else (None, 0) for i in range(depth)]
    if not isinstance(cfg, TokenMergeConfig):
        raise TypeError(f"expected TokenMergeConfig or TokenPruneConfig, got {type(cfg).__name__}")
    if cfg.flops_ratio is None:
        return [("merge", r) for r in merge_schedule(cfg, depth, t)]
    if costs is None:
        raise TokenConfigError("flops_ratio needs the model (its layer sizes) to resolve")
    if len(costs) != depth:
        raise ValueError("costs must have one entry per layer")
    base = _total_macs(costs, simulate_layers([(None, 0)] * depth, num_tokens, num_prefix_tokens), num_prefix_tokens)
    best, best_macs = None, None
    for total in range(0, t + 1):
        ops = [("merge", r) for r in merge_schedule(cfg, depth, t, total=total)]
        macs = _total_macs(costs, simulate_layers(ops, num_tokens, num_prefix_tokens), num_prefix_tokens)
        if macs <= cfg.flops_ratio * base:
            return ops
        if best_macs is None or macs < best_macs:
            best, best_macs = ops, macs
    return best  # target unreachable: the cheapest schedule found


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "blocks") and hasattr(obj, "patch_embed")


def model_num_tokens(model: Any, img_size: int | Sequence[int] | None = None) -> int:
    """Tokens entering the first block (patch tokens + class/distillation/register tokens)."""
    pe = model.patch_embed
    if img_size is None:
        n = int(pe.num_patches)
    else:
        hw = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(v) for v in img_size[-2:])
        if hasattr(pe, "dynamic_feat_size"):
            gh, gw = pe.dynamic_feat_size(hw)
        else:
            gh, gw = hw[0] // pe.patch_size[0], hw[1] // pe.patch_size[1]
        n = int(gh) * int(gw)
    return n + int(getattr(model, "num_prefix_tokens", 1))


def _model_ops(model: Any, cfg: Any, num_tokens: int) -> list[tuple[str | None, float]]:
    depth = len(model.blocks)
    p = int(getattr(model, "num_prefix_tokens", 1))
    if cfg is None:
        state = getattr(model, "_tr_state", None)
        return list(state.ops) if state is not None else [(None, 0)] * depth
    return resolve_layer_ops(cfg, num_tokens, depth, p, block_costs(model))


def tokens_per_layer(
    model_or_cfg: Any,
    num_tokens: int | None = None,
    depth: int | None = None,
    *,
    num_prefix_tokens: int | None = None,
    cfg: TokenMergeConfig | TokenPruneConfig | None = None,
) -> list[int]:
    """Token counts through the blocks: ``[tokens into block 0, ..., into block depth-1, out of the last]``.

    ``model_or_cfg`` is a timm VisionTransformer (its applied reduction, or ``cfg``; num_tokens
    and depth default to the model's) or a config (then ``num_tokens``, prefix included, and
    ``depth`` are required; ``num_prefix_tokens`` defaults to 1).
    """
    if _is_model(model_or_cfg):
        model = model_or_cfg
        n = model_num_tokens(model) if num_tokens is None else int(num_tokens)
        p = int(getattr(model, "num_prefix_tokens", 1)) if num_prefix_tokens is None else int(num_prefix_tokens)
        if depth is not None and depth != len(model.blocks):
            raise ValueError(f"depth {depth} does not match the model's {len(model.blocks)} blocks")
        ops = _model_ops(model, cfg, n)
    else:
        if num_tokens is None or depth is None:
            raise TypeError("tokens_per_layer(cfg, ...) needs num_tokens and depth")
        n, p = int(num_tokens), 1 if num_prefix_tokens is None else int(num_prefix_tokens)
        ops = resolve_layer_ops(model_or_cfg, n, int(depth), p)
    reds = simulate_layers(ops, n, p)
    return [n] + [r.tokens_out for r in reds]


def estimate_flops(
    model: Any,
    cfg: TokenMergeConfig | TokenPruneConfig | None = None,
    img_size: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """MACs/FLOPs of the blocks' attention + MLP with reduced token counts, and without.

    ``cfg`` None: the reduction applied to ``model`` (none if unpatched). FLOPs = 2 * MACs.
    Counted per block: qkv/proj/gate projections and QK^T, AV on ``tokens_in`` tokens; the MLP
    on ``tokens_out`` tokens; the matching/merging (or fusion) overhead as ``reduce_macs``.
    Patch embedding, norms and the head are not counted (the same with and without reduction).
    """
    n = model_num_tokens(model, img_size)
    p = int(getattr(model, "num_prefix_tokens", 1))
    costs = block_costs(model)
    ops = _model_ops(model, cfg, n)
    reds = simulate_layers(ops, n, p)
    base = simulate_layers([(None, 0)] * len(costs), n, p)
    layers = []
    for cost, red in zip(costs, reds, strict=True):
        m = _layer_macs(cost, red, p)
        layers.append(
            {
                "layer": red.layer,
                "op": red.op,
                "amount": red.amount,
                "tokens_in": red.tokens_in,
                "tokens_out": red.tokens_out,
                **m,
                "flops": 2 * m["macs"],
            }
        )
    total = sum(layer["macs"] for layer in layers)
    unreduced = _total_macs(costs, base, p)
    return {
        "num_tokens": n,
        "num_prefix_tokens": p,
        "depth": len(costs),
        "tokens_per_layer": [n] + [r.tokens_out for r in reds],
        "layers": layers,
        "total_macs": total,
        "total_flops": 2 * total,
        "unreduced_macs": unreduced,
        "unreduced_flops": 2 * unreduced,
        "ratio": total / unreduced if unreduced else 1.0,
    }
