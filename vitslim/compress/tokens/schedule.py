"""Per-layer token-reduction schedules, token counts and FLOP estimates (configs: :mod:`.config`).

Counting convention used everywhere here: block ``i`` attends over ``tokens_in`` tokens,
reduces between attention and MLP, and its MLP runs on ``tokens_out`` tokens, which are
also the next block's ``tokens_in``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import TokenConfigError, TokenMergeConfig, TokenPruneConfig, TokenPruneMergeConfig, TokenReductionConfig
from .merge import max_merge
from .prune import evit_tokens_out
from .prune_merge import prune_merge_counts

#: one block's reduction: ``(op, amount)``; op "merge" (r), "prune" (keep rate), "prunemerge"
#: ((keep rate, merge rate)), "cls" (the last block for the first ``amount`` tokens only) or None
LayerOp = tuple[str | None, Any]

__all__ = [
    "LayerOp",
    "LayerReduction",
    "BlockCost",
    "merge_schedule",
    "resolve_layer_ops",
    "simulate_layers",
    "block_costs",
    "model_num_tokens",
    "class_rows",
    "tokens_per_layer",
    "estimate_flops",
]


@dataclass(frozen=True)
class LayerReduction:
    """What one block does: ``op`` and ``amount`` as in :data:`LayerOp`; the token counts are
    after clamping."""

    layer: int
    op: str | None
    amount: Any
    tokens_in: int
    tokens_out: int

    @property
    def removed(self) -> int:
        return self.tokens_in - self.tokens_out


def distribute_total(total: int, weights: Sequence[float]) -> list[int]:
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
    return distribute_total(total, _shape_weights(str(cfg.schedule), depth))


def simulate_layers(ops: Sequence[LayerOp], num_tokens: int, num_prefix_tokens: int = 1) -> list[LayerReduction]:
    """Token counts through the blocks for per-layer ``ops`` (the same clamping as at run time)."""
    out = []
    n = int(num_tokens)
    p = int(num_prefix_tokens)
    for i, (op, amount) in enumerate(ops):
        if op == "merge":
            n_out = n - min(int(amount), max_merge(n, p))
        elif op == "prune":
            n_out = evit_tokens_out(n, p, amount)
        elif op == "prunemerge":
            n_out = p + prune_merge_counts(n - p, *amount)[0]
        elif op == "cls":
            n_out = int(amount)
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
    if red.op == "cls":  # q.k, a.v and the output projection for the class rows only
        proj = cost.attn_dim * cost.embed_dim
        attn = n * (cost.attn_linear_macs - proj) + n_out * proj + 2 * n_out * n * cost.attn_dim
    mlp = n_out * cost.mlp_linear_macs
    reduce = 0
    if red.removed > 0:
        t = n - num_prefix
        na, nb = (t + 1) // 2, t // 2
        if red.op == "merge":  # similarity matrix + one-hot merge matmul
            reduce = na * nb * cost.head_dim + red.removed * nb * (cost.embed_dim + 1)
        elif red.op == "prune":  # weighted fusion of the dropped tokens
            reduce = (red.removed + 1) * cost.embed_dim
        elif red.op == "prunemerge":  # similarity of merged to kept tokens + combine matmul
            k = n_out - num_prefix
            m = prune_merge_counts(t, *red.amount)[1]
            reduce = m * k * (cost.head_dim + cost.embed_dim + 1)
    return {"attn_macs": attn, "mlp_macs": mlp, "reduce_macs": reduce, "macs": attn + mlp + reduce}


def _total_macs(costs: Sequence[BlockCost], reds: Sequence[LayerReduction], num_prefix: int) -> int:
    return sum(_layer_macs(c, r, num_prefix)["macs"] for c, r in zip(costs, reds, strict=True))


def resolve_layer_ops(
    cfg: TokenReductionConfig | None,
    num_tokens: int,
    depth: int,
    num_prefix_tokens: int = 1,
    costs: Sequence[BlockCost] | None = None,
    class_rows: int = 1,
) -> list[LayerOp]:
    """Per-layer :data:`LayerOp` for ``cfg`` (``(None, 0)`` where a block does not reduce).

    ``costs`` (from :func:`block_costs`) is needed only for ``flops_ratio``; ``class_rows`` is what
    the last block keeps under ``class_token_last_block`` (2 with a distillation token).
    """
    if cfg is None:
        return [(None, 0)] * depth
    ops = _reducer_ops(cfg, num_tokens, depth, num_prefix_tokens, costs)
    if cfg.class_token_last_block:
        ops[-1] = ("cls", int(class_rows))
    return ops


def _check_layers(layers: Sequence[int], depth: int, what: str) -> None:
    bad = [i for i in layers if i >= depth]
    if bad:
        raise TokenConfigError(f"{what} layers {bad} are out of range for a model of depth {depth}")


def _reducer_ops(
    cfg: TokenReductionConfig, num_tokens: int, depth: int, num_prefix_tokens: int, costs: Sequence[BlockCost] | None
) -> list[LayerOp]:
    t = int(num_tokens) - int(num_prefix_tokens)
    if isinstance(cfg, TokenPruneConfig):
        _check_layers(cfg.layers, depth, "prune")
        return [("prune", cfg.keep_rate) if i in cfg.layers else (None, 0) for i in range(depth)]
    if isinstance(cfg, TokenPruneMergeConfig):
        _check_layers(cfg.layers, depth, "prunemerge")
        rates = dict(zip(cfg.layers, cfg.keep_rates(), strict=True))
        return [("prunemerge", (rates[i], cfg.merge_rate)) if i in rates else (None, 0) for i in range(depth)]
    if not isinstance(cfg, TokenMergeConfig):
        raise TypeError(f"expected a token-reduction config, got {type(cfg).__name__}")
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


def class_rows(model: Any) -> int:
    """Rows the last block keeps under ``class_token_last_block``: the class token, and the
    distillation token where the model has one. A TokenConfigError unless the head reads them only."""
    if getattr(model, "cls_token", None) is None or getattr(model, "global_pool", None) != "token":
        raise TokenConfigError(
            "class_token_last_block needs a classifier that pools the class token (global_pool 'token'), "
            f"not global_pool {getattr(model, 'global_pool', None)!r}"
        )
    if getattr(model, "attn_pool", None) is not None:
        raise TokenConfigError("class_token_last_block: this model pools by attention over all tokens")
    return 1 + int(getattr(model, "dist_token", None) is not None)


def _model_ops(model: Any, cfg: Any, num_tokens: int) -> list[LayerOp]:
    depth = len(model.blocks)
    p = int(getattr(model, "num_prefix_tokens", 1))
    if cfg is None:
        state = getattr(model, "_tr_state", None)
        return list(state.ops) if state is not None else [(None, 0)] * depth
    rows = class_rows(model) if cfg.class_token_last_block else 1
    return resolve_layer_ops(cfg, num_tokens, depth, p, block_costs(model), rows)


def tokens_per_layer(
    model_or_cfg: Any,
    num_tokens: int | None = None,
    depth: int | None = None,
    *,
    num_prefix_tokens: int | None = None,
    cfg: TokenReductionConfig | None = None,
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
    cfg: TokenReductionConfig | None = None,
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
