"""EViT-style token pruning with fusion, written from the paper (Liang et al., ICLR 2022).

Keep the ``k`` patch tokens the class token attends to most (attention of the class token
to each token, averaged over heads); fuse all the others into one token, the average of
their values weighted by that attention, appended after the kept tokens. Sizes are tracked
as in merging: the fused token's size is the sum of the sizes it absorbed.

Gather / top-k / matmul only (no scatter), static shapes for a fixed keep count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PrunePlan", "evit_keep_count", "evit_tokens_out", "evit_select", "prune_tokens"]


def evit_keep_count(num_patch_tokens: int, keep_rate: float) -> int:
    """Patch tokens kept at a pruning layer: ``ceil(keep_rate * t)``.

    Returns ``t`` (no pruning) when pruning would not reduce the count (k + 1 fused >= t).
    """
    t = int(num_patch_tokens)
    k = math.ceil(round(float(keep_rate) * t, 6))
    k = max(k, 1)
    return t if k + 1 >= t else k


def evit_tokens_out(num_tokens: int, num_prefix: int, keep_rate: float) -> int:
    """Token count after a pruning layer (prefix + kept + one fused token, or unchanged)."""
    t = num_tokens - num_prefix
    k = evit_keep_count(t, keep_rate)
    return num_tokens if k >= t else num_prefix + k + 1


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, i], :]`` for ``x`` [B, N, D] and ``idx`` [B, K] (GatherElements)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _ascending_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Positions where the float mask [B, T] is 1, ascending, as a [B, count] index (top-k, no sort of ints)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device, dtype=torch.float32)
    key = pos + (1.0 - mask.float()) * t  # dropped positions go behind every kept one
    return key.topk(count, dim=-1, largest=False, sorted=True).indices


@dataclass(frozen=True)
class PrunePlan:
    """Kept and fused tokens at one pruning layer; indices are relative to the patch tokens."""

    num_prefix: int
    num_tokens: int
    keep_count: int
    keep: torch.Tensor  # [B, k] kept positions, ascending
    drop: torch.Tensor  # [B, t - k] positions fused into one token
    weight: torch.Tensor  # [B, t - k] fusion weights, summing to 1

    @property
    def num_out(self) -> int:
        return self.num_prefix + self.keep_count + 1


def evit_select(cls_attn: torch.Tensor, keep: int, num_prefix: int = 1) -> PrunePlan:
    """Choose the ``keep`` patch tokens with the highest class attention ``cls_attn`` [B, N].

    ``cls_attn`` covers all N tokens (the prefix columns are ignored). ``keep`` must be below
    the number of patch tokens.
    """
    bsz, n = cls_attn.shape
    p = int(num_prefix)
    t = n - p
    if not 0 < keep < t:
        raise ValueError(f"keep must be in 1..{t - 1}, got {keep}")
    a = cls_attn[:, p:].float()
    order = a.topk(t, dim=-1, sorted=True).indices  # descending attention
    top = order[:, :keep]
    drop = order[:, keep:]
    kept = (top.unsqueeze(-1) == torch.arange(t, device=a.device)).to(torch.float32).sum(dim=1)  # [B, t]
    keep_idx = _ascending_positions(kept, keep)
    w = a.gather(1, drop)
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return PrunePlan(p, n, keep, keep_idx, drop, w)


def prune_tokens(
    plan: PrunePlan, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan`` to ``x`` [B, N, C]: prefix, kept tokens (original order), one fused token."""
    if size is None:
        size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    size = size.to(x.dtype)
    p = plan.num_prefix
    patch, psize = x[:, p:], size[:, p:]
    kept = _gather_tokens(patch, plan.keep)
    kept_size = _gather_tokens(psize, plan.keep)
    dropped = _gather_tokens(patch, plan.drop)
    fused = plan.weight.to(x.dtype).unsqueeze(1) @ dropped  # [B, 1, C]
    fused_size = _gather_tokens(psize, plan.drop).sum(dim=1, keepdim=True)
    x = torch.cat([x[:, :p], kept, fused], dim=1)
    size = torch.cat([size[:, :p], kept_size, fused_size], dim=1)
    return x, size
