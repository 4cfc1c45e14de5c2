"""Logarithmic quantizers for post-softmax (and shifted post-GELU) activations.

All three reserve the **top code** ``2^b - 1`` for exact zero: codes
``0 .. 2^b - 2`` are the ``2^b - 1`` non-zero levels (code 0 is the largest, ``s``),
and every value whose rounded log-index falls past the last non-zero level (including
exact zeros and negative inputs) gets the zero code. So at most ``2^b`` distinct values
are produced and codes always fit in ``b`` bits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import UnsignedQuantizer, kth_quantile
from .registry import register_quantizer

__all__ = ["Log2Quantizer", "LogSqrt2Quantizer", "AdaLogQuantizer", "GELU_SHIFT"]

#: |min GELU(x)|: the ``shift`` that makes post-GELU activations non-negative.
GELU_SHIFT = 0.16997

#: Inputs below this (zeros, negatives, float32 subnormals) take the zero code; it keeps
#: every produced level a normal float32, so that ``Q(Q(x)) == Q(x)`` holds exactly.
_TINY = 2.0 * torch.finfo(torch.float32).tiny
#: The float32 just below ``_TINY``: ``threshold(u, _BELOW_TINY, 0)`` zeroes exactly ``u < _TINY``.
_BELOW_TINY = float(torch.nextafter(torch.tensor(_TINY), torch.tensor(0.0)))


def _log_codes(u: Tensor, scale: Tensor, factor: float, zero_code: int) -> Tensor:
    """Float32 codes ``round(-log2(u/s)·factor)`` clamped to ``[0, zero_code]``; inputs below
    ``_TINY`` (zeros, negatives) are zeroed first, so their log is ``-inf`` and they take
    ``zero_code`` through the clamp, as do indices past the last level. In place on one
    temporary, without masks: these run on every attention map, so each pass counts."""
    t = torch.threshold(u, _BELOW_TINY, 0.0)
    return t.div_(scale).log2_().mul_(-factor).round_().clamp_(0, zero_code)


def _log_buckets(scale: Tensor, step: float, zero_code: int) -> tuple[Tensor, Tensor]:
    """Step function of a log quantizer with levels ``s·2^(-q·step)``, ``q < zero_code``,
    rounding in the log domain and the zero code below the last level."""
    q = torch.arange(zero_code - 1, -1, -1, dtype=torch.float64)  # ascending values
    s = scale.double()
    values = torch.cat([torch.zeros(1, dtype=torch.float64), s * torch.exp2(-q * step)])
    # between level q+1 (or zero when q = Z-1) and level q: s·2^(-(q+1/2)·step)
    thresholds = s * torch.exp2(-(q + 0.5) * step)
    return thresholds, values


def _scale_grid(top: float, period: float, steps: int) -> list[float]:
    """``steps`` scales ``top·2^(-t·period)``, ``t`` in ``[0, 1)``: since the levels are
    invariant under ``s -> s·2^(-period)`` up to one level at each end, this covers all
    distinct level placements that do not waste the top level."""
    return [top * 2.0 ** (-period * i / steps) for i in range(steps)]


@register_quantizer("log2")
class Log2Quantizer(UnsignedQuantizer):
    """Base-2 log quantizer: ``q = clamp(round(-log2(u/s)), 0, 2^b-2)``,
    ``x̂ = s·2^-q``; code ``2^b-1`` is zero (see the module docstring), ``u = x + shift``.

    ``s`` is searched over ``grid`` candidates ``max·2^-t``, ``t in [0, 1)``.
    """

    param_names = ("scale",)

    def __init__(self, bits: int = 8, *, grid: int = 64, shift: float = 0.0, **kwargs: Any) -> None:
        super().__init__(bits, shift=shift, **kwargs)
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.grid = int(grid)
        self.register_buffer("scale", torch.ones(()))

    @property
    def zero_code(self) -> int:
        return (1 << self.bits) - 1

    def extra_config(self) -> dict[str, Any]:
        return {**super().extra_config(), "grid": self.grid}

    def _encode(self, u: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return _log_codes(u, p["scale"], 1.0, self.zero_code)

    def _decode(self, codes: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        v = p["scale"] * torch.exp2(-codes.float())
        return v.masked_fill(codes == self.zero_code, 0.0)

    def _buckets(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return _log_buckets(p["scale"], 1.0, self.zero_code)

    def _candidates(self, u: Tensor) -> Iterable[dict[str, Any]]:
        for s in _scale_grid(self._positive_max(u), 1.0, self.grid):
            yield {"scale": torch.tensor(s)}


@register_quantizer("logsqrt2")
class LogSqrt2Quantizer(UnsignedQuantizer):
    """Base-√2 log quantizer (RepQ-ViT): ``q = round(-2·log2(u/s))`` clamped at 0,
    ``x̂ = s·2^(-ceil(q/2))·(1 + (q mod 2)(√2-1))``; ``q >= 2^b-1`` becomes the zero code
    ``2^b-1`` (see the module docstring).

    As in RepQ-ViT, ``s`` is the ``quantiles`` value (0.999 / 0.9999 / 0.99999 of the
    calibration data) or the maximum, whichever gives the lowest L2 error.
    """

    param_names = ("scale",)

    def __init__(
        self,
        bits: int = 8,
        *,
        quantiles: Sequence[float] = (0.999, 0.9999, 0.99999),
        shift: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(bits, shift=shift, **kwargs)
        self.quantiles = [float(q) for q in quantiles]
        if not all(0.0 < q <= 1.0 for q in self.quantiles):
            raise ValueError(f"quantiles must lie in (0, 1], got {self.quantiles}")
        self.register_buffer("scale", torch.ones(()))

    @property
    def zero_code(self) -> int:
        return (1 << self.bits) - 1

    def extra_config(self) -> dict[str, Any]:
        return {**super().extra_config(), "quantiles": list(self.quantiles)}

    def _encode(self, u: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return _log_codes(u, p["scale"], 2.0, self.zero_code)

    def _decode(self, codes: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        c = codes.to(torch.int64)
        odd = (c % 2).float()
        v = p["scale"] * torch.exp2(-torch.div(c + 1, 2, rounding_mode="floor").float())
        v = v * (1.0 + odd * (math.sqrt(2.0) - 1.0))
        return v.masked_fill(codes == self.zero_code, 0.0)

    def _buckets(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return _log_buckets(p["scale"], 0.5, self.zero_code)

    def _candidates(self, u: Tensor) -> Iterable[dict[str, Any]]:
        top = self._positive_max(u)
        seen = []
        flat = u.reshape(1, -1)
        for q in self.quantiles:
            s = float(kth_quantile(flat, q)[0]) if flat.shape[1] > 1 else top
            if s > 0 and s not in seen:
                seen.append(s)
        if top not in seen:
            seen.append(top)
        for s in seen:
            yield {"scale": torch.tensor(s)}


@register_quantizer("adalog")
class AdaLogQuantizer(UnsignedQuantizer):
    """AdaLog: logarithmic quantizer with an adaptive base ``2^(k/r)``.

    ``r`` is fixed (37), the integer ``k`` and the scale ``s`` are searched jointly by
    MSE (``k`` in ``1..k_max``, ``k_max = 2r`` by default, i.e. bases between ``2^(1/37)``
    and 4 -- bases above 2 pay off at 2 bits; for each ``k``, ``scale_steps`` scales
    ``max·2^(-t·k/r)``, ``t in [0, 1)``).

    * ``index = round(-log2(u/s)·r/k)`` clamped at 0; ``index >= 2^b-1`` becomes the zero
      code ``2^b-1`` (see the module docstring);
    * ``x̂ = s·2^(-floor(index·k/r))·T[(index·k) mod r]`` with ``T[j] = 2^(-j/r)``
      (:meth:`table`): at inference a right shift plus a look-up in an ``r``-entry table.

    ``shift`` (e.g. :data:`GELU_SHIFT` for post-GELU) quantizes ``x + shift``.
    Buffers: ``scale`` (float32), ``k`` (int32).
    """

    param_names = ("scale", "k")

    def __init__(
        self,
        bits: int = 8,
        *,
        r: int = 37,
        k_max: int | None = None,
        scale_steps: int = 16,
        shift: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(bits, shift=shift, **kwargs)
        if int(r) < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        self.r = int(r)
        self.k_max = 2 * self.r if k_max is None else int(k_max)
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if int(scale_steps) < 1:
            raise ValueError(f"scale_steps must be >= 1, got {scale_steps}")
        self.scale_steps = int(scale_steps)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("k", torch.tensor(self.r, dtype=torch.int32))

    @property
    def zero_code(self) -> int:
        return (1 << self.bits) - 1

    def extra_config(self) -> dict[str, Any]:
        return {**super().extra_config(), "r": self.r, "k_max": self.k_max, "scale_steps": self.scale_steps}

    def table(self, device: torch.device | None = None) -> Tensor:
        """``T[j] = 2^(-j/r)``, ``j = 0..r-1`` (float32)."""
        j = torch.arange(self.r, dtype=torch.float64, device=device)
        return torch.exp2(-j / self.r).float()

    def base(self) -> float:
        """Current log base ``2^(k/r)``."""
        return 2.0 ** (int(self.k) / self.r)

    def _encode(self, u: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return _log_codes(u, p["scale"], self.r / float(p["k"]), self.zero_code)

    def _decode(self, codes: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        e = codes.to(torch.int64) * int(p["k"])
        frac = self.table(codes.device)[e % self.r]
        v = p["scale"] * torch.ldexp(frac, -torch.div(e, self.r, rounding_mode="floor").float())
        return v.masked_fill(codes == self.zero_code, 0.0)

    def _buckets(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return _log_buckets(p["scale"], int(p["k"]) / self.r, self.zero_code)

    def _candidates(self, u: Tensor) -> Iterable[dict[str, Any]]:
        top = self._positive_max(u)
        for k in range(1, self.k_max + 1):
            kt = torch.tensor(k, dtype=torch.int32)
            for s in _scale_grid(top, k / self.r, self.scale_steps):
                yield {"scale": torch.tensor(s), "k": kt}
