"""Seeded samples of what calibration sites see: token rows of Linear inputs (with per-channel
extremes) and the operands of a few whole images of an attention (a query row needs every key)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Quota", "Extremes", "RowSampler", "AttentionSampler", "pick", "collect_rows"]


class Quota:
    """Spreads ``total`` picks over a stream of ``images`` images in proportion to each batch."""

    def __init__(self, total: int, images: int) -> None:
        self.total, self.images, self.seen, self.taken = total, images, 0, 0

    def take(self, available: int, batch_images: int) -> int:
        self.seen += batch_images
        target = min(self.total, math.ceil(self.total * self.seen / self.images))
        k = max(0, min(target - self.taken, available))
        self.taken += k
        return k


def pick(n: int, k: int, gen: torch.Generator) -> Tensor:
    return torch.randperm(n, generator=gen)[:k].sort().values


class Extremes:
    """Running per-channel (last axis) minimum and maximum."""

    def __init__(self) -> None:
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def add(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1])
        lo, hi = rows.amin(0), rows.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def rows(self) -> Tensor:
        return torch.stack([self.lo, self.hi])


class RowSampler:
    """Seeded subsample of the token rows of a stream of ``[..., C]`` tensors, with extremes."""

    def __init__(self, samples: int, images: int, seed: int) -> None:
        self.quota = Quota(samples, images)
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[Tensor] = []
        self.extremes = Extremes()

    def add(self, x: Tensor) -> None:
        x = x.detach().float()
        rows = x.reshape(-1, x.shape[-1])
        k = self.quota.take(rows.shape[0], x.shape[0])
        if k:
            self.parts.append(rows[pick(rows.shape[0], k, self.gen).to(rows.device)].clone())
        self.extremes.add(x)

    def rows(self) -> Tensor:
        """The sampled rows (at least one)."""
        return torch.cat(self.parts) if self.parts else self.extremes.rows()

    def values(self) -> Tensor:
        """Sampled rows plus the per-channel extremes of everything seen (for ranges)."""
        return torch.cat([self.rows(), self.extremes.rows()])


class AttentionSampler:
    """Tap storing the operands ``(q, k, v, bias)`` of a seeded subset of whole images."""

    def __init__(self, samples: int, images: int, seed: int) -> None:
        self.samples, self.images = samples, images
        self.quota: Quota | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.extremes = {slot: Extremes() for slot in "qkv"}

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> None:
        if self.quota is None:  # tokens per image are known now
            self.quota = Quota(max(1, math.ceil(self.samples / q.shape[2])), self.images)
        n = self.quota.take(q.shape[0], q.shape[0])
        if n:
            idx = pick(q.shape[0], n, self.gen).to(q.device)
            b = None if bias is None else bias.expand(q.shape[0], *bias.shape[1:])[idx].clone()
            self.parts.append((q[idx].clone(), k[idx].clone(), v[idx].clone(), b))
        for slot, t in zip("qkv", (q, k, v), strict=True):
            self.extremes[slot].add(t)

    def operands(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        q, k, v, b = zip(*self.parts, strict=True)
        return torch.cat(q), torch.cat(k), torch.cat(v), None if b[0] is None else torch.cat(b)


def collect_rows(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Sequence[Tensor],
    *,
    samples: int,
    seed: int,
    inputs: bool = False,
) -> dict[str, Tensor]:
    """Per module: a seeded subsample of about ``samples`` rows of its output (its first input
    with ``inputs``) plus two rows with the per-channel minimum and maximum over all of it (one
    float pass over ``batches``)."""
    images = sum(b.shape[0] for b in batches)
    samplers = {name: RowSampler(samples, images, seed + i) for i, name in enumerate(modules)}
    if inputs:
        handles = [m.register_forward_pre_hook(lambda _m, i, s=samplers[n]: s.add(i[0])) for n, m in modules.items()]
    else:
        handles = [m.register_forward_hook(lambda _m, _i, o, s=samplers[n]: s.add(o)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: s.values() for name, s in samplers.items()}
