"""Prune-and-merge at a few blocks, written from the PPT (Wu et al., 2023) and DiffRate (Chen et
al., ICCV 2023) papers.

At a reducing block the patch tokens are ranked by importance: the attention the class token pays
them, averaged over heads, optionally weighted by the norm of each head's value vector (PPT's
score: a token the class token attends to but whose value is tiny contributes little). The ``k``
most important tokens are kept; the next ``m`` are *merged* into the kept token they are most
similar to (cosine of the attention keys averaged over heads), size-weighted, so their mass stays
and proportional attention still counts it; the least important rest are *pruned* (DiffRate's
prune-the-tail, merge-the-next split). Class, distillation and register tokens (the prefix) are
never ranked, merged or pruned.

Graph per reducing block, static for fixed counts: one TopK over the scores (only ``k + m``
wanted), flat Gathers of the chosen rows, one ``m x k`` similarity MatMul and an ArgMax, one
Equal for the one-hot assignment and one ``k x m`` combine MatMul. (The Equal-with-the-row-maximum
argmax of :mod:`.merge` picked no column for some images at batch 16 in OpenVINO 2026.4 here:
its ReduceMax and Equal saw different roundings of the similarity MatMul.) No scatter, no
transposes of token tensors; kept tokens come out in importance order (attention does not care
about order; nothing downstream pairs neighbours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .rows import flat_rows, take_flat, take_rows

__all__ = [
    "PruneMergePlan",
    "prune_merge_counts",
    "class_attention_score",
    "prune_merge_select",
    "prune_merge_tokens",
]


def prune_merge_counts(num_patch_tokens: int, keep_rate: float, merge_rate: float) -> tuple[int, int]:
    """``(kept, merged)`` patch tokens at a reducing block: ``k = ceil(keep_rate * t)`` (at least 1)
    and ``m = round(merge_rate * (t - k))``; the other ``t - k - m`` are pruned. ``(t, 0)``: no-op."""
    t = int(num_patch_tokens)
    k = max(math.ceil(round(float(keep_rate) * t, 6)), 1)
    if k >= t:
        return t, 0
    return k, int(round(float(merge_rate) * (t - k)))


def class_attention_score(cls_probs: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
    """Importance [B, N] from the class token's attention row ``cls_probs`` [B, H, N], averaged
    over heads; with ``v`` [B, H, N, D] each head's weight is multiplied by its value's L2 norm."""
    if v is not None:
        cls_probs = cls_probs * v.norm(dim=-1)
    return cls_probs.mean(dim=1)


@dataclass(frozen=True)
class PruneMergePlan:
    """What one reducing block does; indices are relative to the patch tokens (prefix excluded)."""

    num_prefix: int
    keep: torch.Tensor  # [B, k] kept tokens, most important first
    merge: torch.Tensor | None  # [B, m] tokens merged into a kept one (None when m == 0)
    partner: torch.Tensor | None  # [B, m] the kept slot (0..k-1) each merged token joins

    @property
    def num_out(self) -> int:
        return self.num_prefix + self.keep.shape[1]


def prune_merge_select(
    score: torch.Tensor, metric: torch.Tensor, keep: int, merge: int, num_prefix: int = 1, eps: float = 1e-6
) -> PruneMergePlan:
    """Rank patch tokens by ``score`` [B, N]; keep ``keep``, pair the next ``merge`` with their most
    similar kept token on ``metric`` [B, N, D] (cosine). Prefix columns are ignored."""
    p = int(num_prefix)
    t = score.shape[1] - p
    if not 0 < keep < t or not 0 <= merge <= t - keep:
        raise ValueError(f"need 0 < keep < {t} and 0 <= merge <= {t} - keep, got keep={keep}, merge={merge}")
    order = score[:, p:].topk(keep + merge, dim=-1, sorted=True).indices
    kept = order[:, :keep]
    if merge == 0:
        return PruneMergePlan(p, kept, None, None)
    merged = order[:, keep:]
    patch = metric[:, p:]
    mk = take_rows(patch, kept)
    mk = mk / mk.norm(dim=-1, keepdim=True).clamp_min(eps)  # the merged side's norm does not change the argmax
    sim = take_rows(patch, merged) @ mk.transpose(-1, -2)  # [B, m, k]
    partner = sim.argmax(dim=-1)
    return PruneMergePlan(p, kept, merged, partner)


def prune_merge_tokens(
    plan: PruneMergePlan, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan`` to ``x`` [B, N, C] with sizes [B, N, 1] (None: ones): prefix, then the kept
    tokens with the merged ones averaged in by size. Returns ``(x, size)``."""
    if size is None:
        size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    size = size.to(x.dtype)
    p = plan.num_prefix
    patch, psize = x[:, p:], size[:, p:]
    t, k = patch.shape[1], plan.keep.shape[1]
    rows = flat_rows(plan.keep, t)  # one index, shared by the tokens and their sizes
    kept, kept_size = take_flat(patch, rows, k), take_flat(psize, rows, k)
    if plan.merge is not None:
        m = plan.merge.shape[1]
        rows = flat_rows(plan.merge, t)
        slots = torch.arange(k, device=x.device).view(1, -1, 1)
        assign = (slots == plan.partner.unsqueeze(1)).to(x.dtype)  # [B, k, m], built in this layout
        msize = take_flat(psize, rows, m)
        total = kept_size + assign @ msize
        kept = (kept * kept_size + assign @ (take_flat(patch, rows, m) * msize)) / total
        kept_size = total
    return torch.cat([x[:, :p], kept], dim=1), torch.cat([size[:, :p], kept_size], dim=1)
