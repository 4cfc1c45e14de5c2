"""A reversible patch of timm's VisionTransformer / Block / Attention for token reduction.

``apply_token_reduction(model, cfg)`` swaps the classes of the model, its blocks and their
attention modules for generated subclasses (``isinstance`` still holds) and attaches one
shared :class:`TokenReductionState` per model; ``remove_token_reduction(model)`` puts the
original classes back and deletes the attributes, so the original forwards (and outputs,
bit for bit) return. Weights are never touched.

The patched forwards keep calling timm's submodules as modules (``norm1``, ``attn.qkv``,
``q_norm``/``k_norm``, ``attn.proj``, ``ls1``/``ls2``, ``norm2``, ``mlp`` with ``fc1``/``fc2``),
so forward hooks and module swaps on them (quantizer placement) keep working. Replacing a
block's ``attn`` module itself after patching is detected and refused: re-apply instead.

Sizes: the state carries ``size`` [B, N, 1] (None until the first reduction in a forward).
Proportional attention adds ``log(size)`` to the attention logits (an additive attn_mask on
the fused SDPA path, an explicit add on the softmax path). Pooling is size-weighted: 'avg'
and 'avgmax' use ``sum(x * size) / sum(size)``; attention pooling ('map') gets log(size) as
its mask when proportional attention is on; 'token' reads the class token, which stays put.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitslim.compress.vit.attention import (
    attention_gate,
    attention_operands,
    attention_output,
    explicit_attention,
    uses_explicit_attention,
)
from vitslim.compress.vit.patching import OUTER_PATCH, TOKEN_PATCH, check_vit, patched_class, restore_class

from .config import TOKEN_REDUCERS, TokenConfigError, TokenPruneConfig, TokenPruneMergeConfig, TokenReductionConfig
from .merge import bipartite_soft_matching, max_merge, merge_tokens
from .prune import evit_keep_count, evit_select, prune_tokens
from .prune_merge import class_attention_score, prune_merge_counts, prune_merge_select, prune_merge_tokens
from .schedule import (
    LayerOp,
    block_costs,
    class_rows,
    model_num_tokens,
    resolve_layer_ops,
    simulate_layers,
)
from .unmerge import PositionTracker, merge_rows, prune_rows

__all__ = [
    "TokenReductionState",
    "TokenTrace",
    "apply_token_reduction",
    "remove_token_reduction",
    "is_token_reduced",
    "token_reduction_state",
    "trace_tokens",
]

_STATE = "_tr_state"
_LAYER = "_tr_layer"


@dataclass(frozen=True)
class TokenTrace:
    """One block's reduction, recorded by :func:`trace_tokens`; ``size`` is [B, tokens_out]."""

    layer: int
    tokens_in: int
    tokens_out: int
    size: torch.Tensor


class TokenReductionState:
    """The one piece of mutable state a patched model shares between its blocks.

    ``ops`` holds per-layer ``(op, amount)`` as resolved at apply time; the per-forward
    fields (``size``, ``metric``, ``cls_attn``) are reset when block 0 runs.
    """

    def __init__(
        self,
        config: TokenReductionConfig,
        ops: list[LayerOp],
        num_prefix_tokens: int,
        proportional_attention: bool,
    ) -> None:
        self.config = config
        self.ops = list(ops)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.proportional_attention = bool(proportional_attention)
        self.size: torch.Tensor | None = None
        self.metric: torch.Tensor | None = None
        self.cls_attn: torch.Tensor | None = None
        self.trace: list[TokenTrace] | None = None
        #: when set, each forward follows the original token positions (:mod:`.unmerge`)
        self.track_positions = False
        self.positions = PositionTracker()

    def __repr__(self) -> str:
        return f"TokenReductionState(config={self.config!r}, prefix={self.num_prefix_tokens})"

    def begin(self) -> None:
        self.size = self.metric = self.cls_attn = None
        self.positions = PositionTracker()

    def remove(self, model: nn.Module) -> None:
        remove_token_reduction(model)

    def reapply(self, model: nn.Module) -> None:
        apply_token_reduction(model, self.config)

    def op(self, layer: int) -> str | None:
        return self.ops[layer][0] if layer < len(self.ops) else None

    def attn_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive attention bias ``log(size)`` as [B, 1, 1, N], or None (no sizes yet / off)."""
        if not self.proportional_attention or self.size is None:
            return None
        return self.size.to(dtype).log().transpose(1, 2).unsqueeze(1)

    def reduce(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Merge or prune ``x`` after block ``layer``'s attention, updating ``size``."""
        op, amount = self.ops[layer] if layer < len(self.ops) else (None, 0)
        n = x.shape[1]
        p = self.num_prefix_tokens
        if op == "merge":
            r = min(int(amount), max_merge(n, p))
            if r > 0:
                plan = bipartite_soft_matching(self.metric, r, p)
                x, self.size = merge_tokens(plan, x, self.size)
                if self.track_positions:
                    self.positions.follow(merge_rows(plan))
        elif op == "prune":
            k = evit_keep_count(n - p, amount)
            if k < n - p:
                plan = evit_select(self.cls_attn, k, p)
                x, self.size = prune_tokens(plan, x, self.size)
                if self.track_positions:
                    self.positions.follow(prune_rows(plan))
        elif self.track_positions and op in ("prunemerge", "cls"):
            what = "prune-merge" if op == "prunemerge" else "class_token_last_block"
            raise TokenConfigError(f"{what} token reduction keeps no patch map: use tome or evit for patch outputs")
        elif op == "prunemerge":
            k, m = prune_merge_counts(n - p, *amount)
            if k < n - p:
                plan = prune_merge_select(self.cls_attn, self.metric, k, m, p)
                x, self.size = prune_merge_tokens(plan, x, self.size)
        elif op == "cls" and self.size is not None:  # the block already kept the class rows only
            self.size = self.size[:, : x.shape[1]]
        self.metric = self.cls_attn = None
        if self.trace is not None:
            size = self.size if self.size is not None else x.new_ones(x.shape[0], x.shape[1], 1)
            self.trace.append(TokenTrace(layer, n, x.shape[1], size.detach()[..., 0].clone()))
        return x


# --------------------------------------------------------------------------- patched forwards


class _TokenAttention:
    """Mixin for timm ``Attention``: optional log-size bias, and exports the merge metric
    (keys averaged over heads) or the class-token attention for the block to use; under op "cls"
    only the class rows are queried."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        st: TokenReductionState = getattr(self, _STATE)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("token reduction does not support attn_mask / is_causal")
        layer = getattr(self, _LAYER)
        op = st.op(layer)
        gate = attention_gate(self, x)
        q, k, v = attention_operands(self, x)
        if op == "cls":
            rows = int(st.ops[layer][1])
            q, gate = q[:, :, :rows], None if gate is None else gate[:, :rows]
        bias = st.attn_bias(q.dtype)
        scored = op in ("prune", "prunemerge")

        # With a log-size bias the explicit softmax path is used even when timm would fuse:
        # torch.export's decomposition of SDPA with a float mask yields strides that break the
        # reshape below (torch 2.14), and the ONNX graph is the explicit form either way. The
        # explicit path is shared with the quantization patch (its matmul quantizer hook points).
        if self.fused_attn and bias is None and not uses_explicit_attention(self):
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
            if scored:  # only the class token's row is needed
                cls_probs = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]
        else:
            x, attn = explicit_attention(self, q, k, v, bias)
            cls_probs = attn[:, :, 0]
        if scored:
            value_norm = op == "prunemerge" and st.config.value_norm
            st.cls_attn = class_attention_score(cls_probs, v if value_norm else None)
        if op in ("merge", "prunemerge"):  # keys averaged over heads, in the token-major layout they were split in
            st.metric = k.transpose(1, 2).mean(dim=2)
        return attention_output(self, x, gate)


class _TokenBlock:
    """Mixin for timm ``Block``: reduce tokens between the attention and the MLP branch."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        st: TokenReductionState = getattr(self, _STATE)
        layer = getattr(self, _LAYER)
        if layer == 0:
            st.begin()
        if getattr(self.attn, _STATE, None) is not st:
            raise RuntimeError(
                f"block {layer}'s attention module was replaced after apply_token_reduction; "
                "call remove_token_reduction and apply it again"
            )
        h = self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = (x[:, : h.shape[1]] if st.op(layer) == "cls" else x) + h
        x = st.reduce(layer, x)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class _TokenVisionTransformer:
    """Mixin for timm ``VisionTransformer``: size-weighted pooling, state cleared after forward."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            getattr(self, _STATE).begin()

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        st: TokenReductionState = getattr(self, _STATE)
        size = st.size
        if size is None or size.shape[1] != x.shape[1]:
            return super().pool(x, pool_type)
        p = self.num_prefix_tokens
        include_prefix = bool(getattr(self, "pool_include_prefix", False))
        attn_pool = getattr(self, "attn_pool", None)
        if attn_pool is not None:
            if not include_prefix:
                x, size = x[:, p:], size[:, p:]
            mask = size.to(x.dtype).log().transpose(1, 2).unsqueeze(1) if st.proportional_attention else None
            return attn_pool(x, attn_mask=mask)
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type in ("avg", "avgmax"):
            if not include_prefix:
                x, size = x[:, p:], size[:, p:]
            size = size.to(x.dtype)
            mean = (x * size).sum(dim=1) / size.sum(dim=1)
            return mean if pool_type == "avg" else 0.5 * (x.amax(dim=1) + mean)
        return super().pool(x, pool_type)


def _patched(cls: type, mixin: type) -> type:
    return patched_class(cls, mixin, TOKEN_PATCH, "TokenReduced", __name__)


# --------------------------------------------------------------------------- the verbs


def apply_token_reduction(model: nn.Module, cfg: TokenReductionConfig) -> nn.Module:
    """Patch ``model`` (a timm VisionTransformer) in place for token merging or pruning.

    Applying again replaces the previous reduction. Returns ``model``.
    """
    if not isinstance(cfg, tuple(TOKEN_REDUCERS.values())):
        raise TypeError(f"expected a token-reduction config, got {type(cfg).__name__}")
    check_vit(model, "token reduction", TokenConfigError)
    if is_token_reduced(model):
        remove_token_reduction(model)
    p = int(model.num_prefix_tokens)
    if isinstance(cfg, (TokenPruneConfig, TokenPruneMergeConfig)) and getattr(model, "cls_token", None) is None:
        raise TokenConfigError(f"{cfg.method} ranks tokens by class-token attention; this model has no class token")
    n = model_num_tokens(model)
    rows = class_rows(model) if cfg.class_token_last_block else 1
    ops = resolve_layer_ops(cfg, n, len(model.blocks), p, block_costs(model), rows)
    state = TokenReductionState(cfg, ops, p, cfg.proportional_attention)

    model.__class__ = _patched(type(model), _TokenVisionTransformer)
    setattr(model, _STATE, state)
    model.__dict__[OUTER_PATCH] = state
    for i, blk in enumerate(model.blocks):
        blk.__class__ = _patched(type(blk), _TokenBlock)
        blk.attn.__class__ = _patched(type(blk.attn), _TokenAttention)
        for m in (blk, blk.attn):
            setattr(m, _STATE, state)
            setattr(m, _LAYER, i)
    return model


def remove_token_reduction(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_token_reduction`: original classes back, added attributes removed."""
    for m in model.modules():
        restore_class(m, TOKEN_PATCH)
        for attr in (_STATE, _LAYER, OUTER_PATCH):
            m.__dict__.pop(attr, None)
    return model


def is_token_reduced(model: nn.Module) -> bool:
    return TOKEN_PATCH in vars(type(model)) and _STATE in model.__dict__


def token_reduction_state(model: nn.Module) -> TokenReductionState | None:
    """The shared state of a patched model (None if unpatched)."""
    return model.__dict__.get(_STATE)


@contextlib.contextmanager
def trace_tokens(model: nn.Module) -> Iterator[list[TokenTrace]]:
    """Record each block's token counts and sizes during forwards inside the ``with``."""
    state = token_reduction_state(model)
    if state is None:
        raise ValueError("model has no token reduction applied")
    records: list[TokenTrace] = []
    previous, state.trace = state.trace, records
    try:
        yield records
    finally:
        state.trace = previous


def layer_plan(model: nn.Module, img_size: int | tuple[int, int] | None = None):
    """Per-block :class:`~vitslim.compress.tokens.schedule.LayerReduction` of a patched model."""
    state = token_reduction_state(model)
    ops = state.ops if state is not None else [(None, 0)] * len(model.blocks)
    return simulate_layers(ops, model_num_tokens(model, img_size), int(model.num_prefix_tokens))
