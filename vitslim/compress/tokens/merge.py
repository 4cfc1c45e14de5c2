"""ToMe-style bipartite soft matching, written from the paper (Bolya et al., ICLR 2023).

Pure functions on tensors, no module state. The survivors (every token but the ``r`` merged A
tokens, in their original order) are gathered by row, and each merged A token is added into its
partner's row by one small 0/1 *assign* product: ``assign[b, o, j] = (keep[b, o] == dst[b, j])``
is ``[N - r, r]``, so the merge costs ``(N - r) * r * C`` multiply-adds instead of the
``(N - r) * N * C`` of a full combine matrix. Per merging layer the exported graph has one
similarity MatMul of the A rows by the B rows (strided slices: a quarter of an all-pairs
product), one ReduceMax, an Equal-based argmax, two TopK (the ``r`` edges, the ascending
survivors), flat row Gathers, one Equal and the small assign MatMuls (tokens, sizes), with static
shapes for a static ``r``: no ScatterElements at all (ONNX has no 'mean' reduction and TensorRT's
scatter layer has none), no index expansion for GatherElements (a slow reference kernel in
OpenVINO), so ONNX Runtime, OpenVINO and TensorRT run it. The per-token ``target`` that unmerging
needs is built (one scatter) only when it is asked for.

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

from .rows import flat_rows, take_flat

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
    partners, ``keep`` the survivors in original order.
    """

    num_prefix: int
    num_tokens: int  # N of the input, prefix included
    r: int
    src: torch.Tensor  # [B, r] A tokens merged away
    dst: torch.Tensor  # [B, r] their B partners
    keep: torch.Tensor  # [B, N - r] positions of the survivors, ascending (prefix first)

    @property
    def num_out(self) -> int:
        return self.num_tokens - self.r

    @property
    def target(self) -> torch.Tensor:
        """[B, N]: the position each token ends in (its own, or its partner's); one scatter, for unmerging."""
        position = torch.arange(self.num_tokens, device=self.src.device).expand(self.src.shape[0], -1)
        return position.scatter(1, self.src, self.dst)


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
    attention keys averaged over heads). The similarity is one matmul of the A rows (strided
    slice) by the B rows: a quarter of the all-pairs product, and no mask. Positions in the plan
    are over all ``N`` tokens (prefix included).
    """
    n = metric.shape[1]
    p = int(num_prefix)
    r = min(max(int(r), 0), max_merge(n, p))
    if r == 0:
        none = torch.zeros(metric.shape[0], 0, dtype=torch.long, device=metric.device)
        return MergePlan(p, n, 0, none, none, torch.arange(n, device=metric.device).expand(metric.shape[0], n))
    m = metric[:, p:]
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(eps)
    scores = m[:, 0::2] @ m[:, 1::2].transpose(-1, -2)  # [B, A, B] cosine: set A rows, set B columns
    node_max = scores.amax(dim=-1)
    chosen = node_max.topk(r, dim=-1, sorted=True).indices  # [B, r] indices into set A
    src = p + 2 * chosen
    dst = p + 1 + 2 * first_max_index(scores, node_max).gather(1, chosen)
    # survivors first, in original order; 1 at the merged A tokens from an Equal, no scatter. In
    # float32 (exact for these integers): with int64, OpenVINO 2026.4 sorted only the first image
    # of a batch right
    position = torch.arange(n, device=metric.device, dtype=torch.float32)
    key = position + n * (src.unsqueeze(-1) == position).to(torch.float32).amax(dim=1)
    keep = key.topk(n - r, dim=-1, largest=False, sorted=True).indices
    return MergePlan(p, n, r, src, dst, keep)


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
    n_out, n = plan.num_out, plan.num_tokens
    keep, src = flat_rows(plan.keep, n), flat_rows(plan.src, n)  # one index each, shared by x and size
    assign = (plan.keep.unsqueeze(-1) == plan.dst.unsqueeze(1)).to(x.dtype)  # [B, N - r, r]
    if size is None:
        out_size = 1.0 + assign.sum(dim=-1, keepdim=True)
        return (take_flat(x, keep, n_out) + assign @ take_flat(x, src, plan.r)) / out_size, out_size
    size = size.to(x.dtype)
    weighted = x * size
    out_size = take_flat(size, keep, n_out) + assign @ take_flat(size, src, plan.r)
    return (take_flat(weighted, keep, n_out) + assign @ take_flat(weighted, src, plan.r)) / out_size, out_size


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
    target = plan.target
    position = torch.arange(plan.num_tokens, device=x.device)
    survivor_row = (target == position).long().cumsum(dim=-1) - 1  # output row of every survivor
    rows = survivor_row.gather(1, target)
    return x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
