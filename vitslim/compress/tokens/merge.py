"""ToMe-style bipartite soft matching, written from the paper (Bolya et al., ICLR 2023).

Pure functions on tensors, no module state. Only sort/top-k, gather, comparisons,
cumulative sums and a small one-hot matmul are used: no ``scatter``/``index_add``/
``scatter_reduce`` (ONNX has no 'mean' scatter reduction and TensorRT's scatter layer
has no reduction at all), so with a static ``r`` the exported graph has static shapes
and runs in ONNX Runtime and TensorRT.

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

    Index tensors are relative to the patch tokens (prefix excluded): ``src``/``partner``
    index set A, ``dst`` indexes set B, ``keep`` indexes the patch sequence in original order.
    """

    num_prefix: int
    num_tokens: int  # N of the input, prefix included
    r: int
    src: torch.Tensor  # [B, r] A tokens merged away
    dst: torch.Tensor  # [B, r] their B partners
    partner: torch.Tensor  # [B, Na] best B partner of every A token
    merged: torch.Tensor  # [B, Na] 1.0 where the A token is merged away, else 0.0 (float32)
    survive: torch.Tensor  # [B, t] 1.0 where the patch token survives, original order (float32)
    keep: torch.Tensor  # [B, t - r] positions of the survivors, ascending

    @property
    def num_out(self) -> int:
        return self.num_tokens - self.r


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sets A (even) and B (odd) back into original order: a0 b0 a1 b1 ... (static reshapes)."""
    nb = b.shape[1]
    out = torch.stack([a[:, :nb], b], dim=2).flatten(1, 2)
    if a.shape[1] > nb:
        out = torch.cat([out, a[:, nb:]], dim=1)
    return out


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, i], :]`` for ``x`` [B, N, D] and ``idx`` [B, K] (GatherElements)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _ascending_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Positions where the float mask [B, T] is 1, ascending, as a [B, count] index (top-k, no sort of ints)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device, dtype=torch.float32)
    key = pos + (1.0 - mask.float()) * t  # dropped positions go behind every kept one
    return key.topk(count, dim=-1, largest=False, sorted=True).indices


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_prefix: int = 1, eps: float = 1e-6) -> MergePlan:
    """Match A tokens to B tokens on ``metric`` [B, N, D] and choose the ``r`` best edges.

    ``r`` is clamped to :func:`max_merge`. The metric is L2-normalised here (ToMe uses the
    attention keys averaged over heads).
    """
    bsz, n, _ = metric.shape
    p = int(num_prefix)
    t = n - p
    r = min(max(int(r), 0), max_merge(n, p))
    m = metric[:, p:]
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(eps)
    a, b = m[:, 0::2], m[:, 1::2]
    na, nb = a.shape[1], b.shape[1]
    scores = a @ b.transpose(-1, -2)  # [B, Na, Nb] cosine similarity
    node_max, partner = scores.max(dim=-1)
    if r > 0:
        src = node_max.topk(r, dim=-1, sorted=True).indices  # [B, r]
        dst = partner.gather(1, src)
        ar = torch.arange(na, device=metric.device)
        merged = (src.unsqueeze(-1) == ar).to(torch.float32).sum(dim=1)  # [B, Na] one-hot "any"
    else:
        src = dst = torch.zeros(bsz, 0, dtype=torch.long, device=metric.device)
        merged = torch.zeros(bsz, na, dtype=torch.float32, device=metric.device)
    survive = _interleave(1.0 - merged, torch.ones(bsz, nb, dtype=torch.float32, device=metric.device))
    keep = _ascending_positions(survive, t - r)
    return MergePlan(p, n, r, src, dst, partner, merged, survive, keep)


def merge_tokens(
    plan: MergePlan, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan`` to ``x`` [B, N, C] with token sizes ``size`` [B, N, 1] (None: all ones).

    Returns ``(x, size)`` with ``N - r`` tokens; merged tokens are size-weighted averages and
    their size is the sum of the sizes merged. ``r == 0`` returns the inputs unchanged.
    """
    if size is None:
        size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    if plan.r == 0:
        return x, size
    p = plan.num_prefix
    c = x.shape[-1]
    size = size.to(x.dtype)
    # carry the size as one extra channel so one gather/matmul moves both
    xs = torch.cat([x[:, p:] * size[:, p:], size[:, p:]], dim=-1)
    a, b = xs[:, 0::2], xs[:, 1::2]
    src_vals = _gather_tokens(a, plan.src)  # [B, r, C+1]
    onehot = (plan.dst.unsqueeze(-1) == torch.arange(b.shape[1], device=x.device)).to(x.dtype)  # [B, r, Nb]
    b = b + onehot.transpose(1, 2) @ src_vals
    out = _gather_tokens(_interleave(a, b), plan.keep)  # [B, t - r, C+1]
    out_size = out[..., c:]
    out_x = out[..., :c] / out_size
    return torch.cat([x[:, :p], out_x], dim=1), torch.cat([size[:, :p], out_size], dim=1)


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
    bsz = x.shape[0]
    p = plan.num_prefix
    if plan.r == 0:
        return x
    dest = plan.survive.cumsum(dim=-1) - 1.0  # output position of every survivor
    dest_a, dest_b = dest[:, 0::2], dest[:, 1::2]
    dest_a = torch.where(plan.merged > 0, dest_b.gather(1, plan.partner), dest_a)
    dest = _interleave(dest_a, dest_b).long() + p
    prefix = torch.arange(p, device=x.device).unsqueeze(0).expand(bsz, -1)
    idx = torch.cat([prefix, dest], dim=1)
    return _gather_tokens(x, idx)
