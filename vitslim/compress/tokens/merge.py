"""ToMe-style bipartite soft matching, written from the paper (Bolya et al., ICLR 2023).

Pure functions on tensors, no module state. The merge is one 0/1 *combine* matrix product:
each patch token has a *target* (its own position, or its partner's when it is merged away),
the survivors keep their original order, and ``combine[b, o, i] = (keep[b, o] == target[b, i])``
sums every token into the survivor it ends in. Per merging layer the exported graph has one
similarity MatMul, one ReduceMax/ArgMax, two TopK, one ScatterElements (no reduction: the
merged positions are distinct), one Equal and one combine MatMul, with static shapes for a
static ``r``: no ``scatter`` with a reduction (ONNX has no 'mean' reduction and TensorRT's
scatter layer has none at all), no index expansion for GatherElements (a slow reference
kernel in OpenVINO), so ONNX Runtime, OpenVINO and TensorRT run it.

Token layout: ``x`` is ``[B, N, C]`` with ``num_prefix`` protected tokens first (class,
distillation and register tokens), then ``t = N - num_prefix`` patch tokens. The patch
tokens alternate between set A (even positions 0, 2, ...) and set B (odd positions).
Protected tokens are in neither set: they are never merged and nothing is merged into them.

Each A token picks its most similar B token (cosine similarity of the metric); the ``r``
A tokens with the highest similarity are merged into their partners by size-weighted
averaging ``sum(x * size) / sum(size)``. Survivors keep their original relative order
(prefix tokens first, at their positions), so the next layer's alternating split still
pairs spatial neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "MergePlan",
    "max_merge",
    "bipartite_soft_matching",
    "merge_tokens",
    "unmerge_tokens",
    "merge_wavg",
]


def max_merge(num_tokens: int, num_prefix: int = 1) -> int:
    """The most tokens one matching step may remove from ``num_tokens`` (``t // 2`` patch tokens).

    ``r`` is clamped to this so at most half the patch tokens (every B partner kept) go per step.
    """
    return max(int(num_tokens) - int(num_prefix), 0) // 2


@dataclass(frozen=True)
class MergePlan:
    """Which tokens merge where; the output of :func:`bipartite_soft_matching`.

    Index tensors are token positions (prefix included): ``src`` are A tokens, ``dst`` their B
    partners, ``target`` and ``keep`` index the sequence in original order.
    """

    num_prefix: int
    num_tokens: int  # N of the input, prefix included
    r: int
    src: torch.Tensor  # [B, r] A tokens merged away
    dst: torch.Tensor  # [B, r] their B partners
    target: torch.Tensor  # [B, N] position each token ends in (its own, or its partner's)
    keep: torch.Tensor  # [B, N - r] positions of the survivors, ascending (prefix first)

    @property
    def num_out(self) -> int:
        return self.num_tokens - self.r


#: similarity given to pairs that may not merge (cosine similarities are >= -1)
NO_EDGE = -4.0


def edge_mask(num_tokens: int, num_prefix: int, device: torch.device | None = None) -> torch.Tensor:
    """[N, N] additive mask of the allowed edges: 0 from an A token (row) to a B token (column),
    :data:`NO_EDGE` elsewhere (prefix tokens, A→A, B→anything). A constant of the graph."""
    pos = torch.arange(num_tokens, device=device)
    offset = pos - num_prefix
    is_a = (offset >= 0) & (offset % 2 == 0)
    is_b = (offset >= 0) & (offset % 2 == 1)
    return torch.where(is_a[:, None] & is_b[None, :], 0.0, NO_EDGE)


def first_max_index(scores: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """Index of the first column where each row of ``scores`` [B, N, M] reaches its maximum
    ``row_max`` [B, N] (an argmax): an Equal, an integer product and a ReduceMax instead of the
    TopK that ArgMax becomes in OpenVINO, which costs as much as an int8 transformer block here.
    The product is in float32 (column counts are exact in it): with int32 (or int64, which it runs
    as int32), OpenVINO 2026.4's CPU plugin returned zeros for the last images of a batch of 9 or
    more after a previous merge; in float32 it agrees with ONNX Runtime, with its bf16 hint too."""
    m = scores.shape[-1]
    from_end = torch.arange(m, 0, -1, device=scores.device, dtype=torch.float32)  # first column scores highest
    hits = (scores == row_max.unsqueeze(-1)).to(torch.float32) * from_end
    return (m - hits.amax(dim=-1)).long()


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_prefix: int = 1, eps: float = 1e-6) -> MergePlan:
    """Match A tokens to B tokens on ``metric`` [B, N, D] and choose the ``r`` best edges.

    ``r`` is clamped to :func:`max_merge`. The metric is L2-normalised here (ToMe uses the
    attention keys averaged over heads). The similarity of all token pairs is one matmul plus
    the constant :func:`edge_mask` (no strided slicing): rows that are not A tokens never win.
    Positions in the plan are over all ``N`` tokens (prefix included).
    """
    bsz, n, _ = metric.shape
    p = int(num_prefix)
    r = min(max(int(r), 0), max_merge(n, p))
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(eps)
    scores = m @ m.transpose(-1, -2) + edge_mask(n, p, metric.device).to(m.dtype)  # [B, N, N] cosine
    node_max = scores.amax(dim=-1)
    partner = first_max_index(scores, node_max)
    src = node_max.topk(r, dim=-1, sorted=True).indices  # [B, r] A tokens (all rows else are masked)
    dst = partner.gather(1, src)
    position = torch.arange(n, device=metric.device).expand(bsz, n)
    target = position.scatter(1, src, dst)  # merged A tokens point at their B partner
    # survivors (target == own position) first, in original order
    key = position + n * (target != position).to(position.dtype)
    keep = key.topk(n - r, dim=-1, largest=False, sorted=True).indices
    return MergePlan(p, n, r, src, dst, target, keep)


def merge_tokens(
    plan: MergePlan, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan`` to ``x`` [B, N, C] with token sizes ``size`` [B, N, 1] (None: all ones).

    Returns ``(x, size)`` with ``N - r`` tokens; merged tokens are size-weighted averages and
    their size is the sum of the sizes merged. ``r == 0`` returns the inputs unchanged.
    """
    if size is None and plan.r == 0:
        size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    if plan.r == 0:
        return x, size
    combine = (plan.keep.unsqueeze(-1) == plan.target.unsqueeze(1)).to(x.dtype)  # [B, N - r, N]
    if size is None:
        out_size = combine.sum(dim=-1, keepdim=True)
        return (combine @ x) / out_size, out_size
    size = size.to(x.dtype)
    out_size = combine @ size
    return (combine @ (x * size)) / out_size, out_size


def merge_wavg(
    metric: torch.Tensor, x: torch.Tensor, r: int, size: torch.Tensor | None = None, num_prefix: int = 1
) -> tuple[torch.Tensor, torch.Tensor, MergePlan]:
    """Match on ``metric`` and merge ``x`` in one call; returns ``(x, size, plan)``."""
    plan = bipartite_soft_matching(metric, r, num_prefix)
    x, size = merge_tokens(plan, x, size)
    return x, size, plan


def unmerge_tokens(plan: MergePlan, x: torch.Tensor) -> torch.Tensor:
    """Map merged tokens [B, N - r, C] back to the input layout [B, N, C].

    Every input token receives the value of the output token it ended up in (merged A tokens
    get their B partner's), e.g. to lay merged features back onto the patch grid.
    """
    if plan.r == 0:
        return x
    position = torch.arange(plan.num_tokens, device=x.device)
    survivor_row = (plan.target == position).long().cumsum(dim=-1) - 1  # output row of every survivor
    rows = survivor_row.gather(1, plan.target)
    return x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
