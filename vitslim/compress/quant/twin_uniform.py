"""Twin-uniform quantizer (PTQ4ViT baseline for post-softmax / post-GELU values)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .base import MIN_SCALE, UnsignedQuantizer
from .registry import register_quantizer

__all__ = ["TwinUniformQuantizer"]


@register_quantizer("twin_uniform")
class TwinUniformQuantizer(UnsignedQuantizer):
    """Two uniform ranges sharing ``b`` bits (PTQ4ViT's twin uniform quantization).

    With ``u = x + shift`` and ``n = 2^(b-1)`` codes per range:

    * fine range ``R1 = [0, n·Δ1)``: ``q = round(u/Δ1)``, code ``q``;
    * coarse range ``R2``, ``Δ2 = 2^m·Δ1``: its levels ``q·Δ2`` for ``q`` in ``j0..n-1``,
      ``j0 = 2^(b-1-m)`` (``j0·Δ2 = n·Δ1``, the first level past R1), with
      ``q = j0 + clamp(round((u - n·Δ1)/Δ2), 0, n-1-j0)``, code ``n + q``;

    i.e. the top code bit chooses the range; ``x̂ = q·Δ1`` or ``n·Δ1 + (q-j0)·Δ2`` (``= q·Δ2``,
    in float32 the sum the export computes), minus the shift.
    The power-of-two ratio ``2^m`` (as in PTQ4ViT) makes rescaling between the ranges a
    shift. R2 is rounded relative to its first level ``n·Δ1`` (the same levels and
    thresholds as ``round(u/Δ2)``, up to ties): that offset is what lets the ONNX export
    (:class:`~vitslim.export.qdq_modules.ExportTwinUniform`) compute both ranges with two plain
    ``QuantizeLinear`` ops and no masks. A value belongs to R1 when it rounds inside it
    (``round(u/Δ1) <= n-1``, i.e. ``u < (n-½)·Δ1``; PTQ4ViT's seam is ``n·Δ1``): values in
    ``[(n-½)Δ1, n·Δ1)`` then go to the R2 level ``n·Δ1``, their nearest level, and
    ``Q(Q(x)) = Q(x)`` survives float noise at the seam. ``m`` is restricted to ``1..b-1``,
    so ``n·Δ1`` is an R2 level and the quantizer is monotone. Negative ``u`` maps to 0.

    Search (MSE): for each ``m``, ``Δ2 = max·ratio/(n-1)`` for ``grid`` ratios in
    ``[0.3, 1]``, ``Δ1 = Δ2/2^m``. Buffers: ``delta1`` (float32), ``m`` (int32).
    """

    param_names = ("delta1", "m")

    def __init__(self, bits: int = 8, *, grid: int = 48, shift: float = 0.0, **kwargs: Any) -> None:
        super().__init__(bits, shift=shift, **kwargs)
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.grid = int(grid)
        self.half = 1 << (self.bits - 1)
        self.register_buffer("delta1", torch.ones(()))
        self.register_buffer("m", torch.ones((), dtype=torch.int32))

    def extra_config(self) -> dict[str, Any]:
        return {**super().extra_config(), "grid": self.grid}

    def delta2(self) -> Tensor:
        return self.ranges()[1]

    def ranges(self) -> tuple[Tensor, Tensor, int, int]:
        """The calibrated ``Δ1``, ``Δ2``, ``n`` and ``j0`` (see :meth:`_ranges`)."""
        return self._ranges(self.delta1, self.m)

    def _ranges(self, delta1: Tensor, m: Tensor) -> tuple[Tensor, Tensor, int, int]:
        """``Δ1``, ``Δ2 = 2^m·Δ1``, the codes per range ``n`` and ``j0``: R2's first level ``j0·Δ2 = n·Δ1``."""
        m = int(m)
        return delta1, delta1 * (2.0**m), self.half, 1 << (self.bits - 1 - m)

    def _encode(self, u: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        d1, d2, n, j0 = self._ranges(p["delta1"], p["m"])
        q1 = torch.round(u / d1).clamp_min(0)
        q2 = torch.clamp(torch.round(torch.relu(u - n * d1) / d2), 0, n - 1 - j0) + (n + j0)
        return torch.where(q1 <= n - 1, q1, q2)

    def _decode(self, codes: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        d1, d2, n, j0 = self._ranges(p["delta1"], p["m"])
        c = codes.to(torch.int64)
        # R2 as n·Δ1 + (q - j0)·Δ2: the float32 sum the export's two branches compute
        return torch.where(c < n, c.float() * d1, n * d1 + (c - n - j0).float() * d2)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        """Both ranges in place in float32, as the ONNX export computes them (``min(round(u/Δ1), n)·Δ1``
        plus R2's offset from ``n·Δ1``): the same values as the codes path, without int tensors,
        masks or a table look-up (about three times faster on attention maps)."""
        self._check_calibrated()
        d1, d2, n, j0 = self.ranges()
        fine = torch.relu(x.float() + self.shift) if self.shift else torch.relu(x.float())
        coarse = torch.sub(fine, n * d1).relu_().div_(d2).round_().clamp_(max=n - 1 - j0).mul_(d2)
        out = fine.div_(d1).round_().clamp_(max=n).mul_(d1).add_(coarse)
        return out.sub_(self.shift) if self.shift else out

    def _buckets(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        d1, d2, n, j0 = self._ranges(p["delta1"].double(), p["m"])
        q = torch.arange(n, dtype=torch.float64)
        j = torch.arange(j0, n, dtype=torch.float64)
        values = torch.cat([q * d1, j * d2])
        thresholds = torch.cat([(q + 0.5) * d1, (j[:-1] + 0.5) * d2])
        return thresholds, values

    def _candidates(self, u: Tensor) -> Iterable[dict[str, Any]]:
        top = self._positive_max(u)
        n = self.half
        g = self.grid
        ratios = [1.0 - 0.7 * i / max(g - 1, 1) for i in range(g)] if g > 1 else [1.0]
        for m in range(1, self.bits):
            mt = torch.tensor(m, dtype=torch.int32)
            for ratio in ratios:
                d2 = max(top * ratio / max(n - 1, 1), MIN_SCALE)
                yield {"delta1": torch.tensor(d2 / 2.0**m), "m": mt}
