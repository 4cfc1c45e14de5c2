"""Uniform (affine) quantizer: symmetric or asymmetric, per tensor or per channel."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import DEFAULT_SEARCH_SAMPLES, MIN_SCALE, Quantizer, SortedRows, kth_quantile
from .registry import register_quantizer

__all__ = ["UniformQuantizer"]

SCALE_METHODS = ("minmax", "percentile", "mse")
#: rows of at most this many values per code are scored by fake-quantizing them with every
#: candidate (weights: 10-20x faster at 8 bits than sorted prefix sums, the same choices)
DIRECT_VALUES_PER_CODE = 32


@register_quantizer("uniform")
class UniformQuantizer(Quantizer):
    """``q = clamp(round(x/s) + z, qmin, qmax)``, ``x̂ = (q - z)·s``.

    * ``symmetric=True``: signed narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]``, ``z = 0``
      (TensorRT style: zero is exactly zero and the grid is symmetric; weights). With
      ``narrow=False`` the codes reach ``-2^(b-1)`` too (the scale still maps the range's
      bound to ``2^(b-1)-1``): at 8 bits that is QuantizeLinear's own int8 saturation, so an
      export needs no Clip before it (TensorRT's activations).
    * ``symmetric=False``: unsigned ``[0, 2^b-1]`` with an integer zero point; the range
      is widened to contain 0 so that 0 is represented exactly.
    * ``channel_axis``: ``None`` for per-tensor, otherwise one scale (and zero point) per
      index of that axis (weights: ``channel_axis=0``, the output rows; activations of
      shape ``(..., C)``: ``channel_axis=-1``).
    * ``method``: how the clipping range is chosen at calibration

      - ``"minmax"``: the observed min/max (per channel);
      - ``"percentile"``: the ``percentile`` / ``1 - percentile`` quantiles (of ``|x|``
        when symmetric);
      - ``"mse"``: the min/max multiplied by each of ``grid`` clipping ratios
        ``k/grid, k = 1..grid``; the ratio with the lowest MSE wins, per channel.

    Buffers: ``scale`` (float32) and ``zero_point`` (int32), shape ``()`` per tensor or
    ``(C,)`` per channel.
    """

    def __init__(
        self,
        bits: int = 8,
        *,
        symmetric: bool = False,
        channel_axis: int | None = None,
        method: str = "mse",
        percentile: float = 0.9999,
        grid: int = 100,
        search_samples: int | None = DEFAULT_SEARCH_SAMPLES,
        seed: int = 0,
        narrow: bool = True,
    ) -> None:
        super().__init__(bits, search_samples=search_samples, seed=seed)
        if method not in SCALE_METHODS:
            raise ValueError(f"method must be one of {SCALE_METHODS}, got {method!r}")
        if not 0.5 < float(percentile) <= 1.0:
            raise ValueError(f"percentile must be in (0.5, 1], got {percentile}")
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.symmetric = bool(symmetric)
        self.channel_axis = None if channel_axis is None else int(channel_axis)
        self.method = method
        self.percentile = float(percentile)
        self.grid = int(grid)
        self.narrow = bool(narrow)
        if self.symmetric:
            self.qmax = (1 << (self.bits - 1)) - 1
            self.qmin = -self.qmax if self.narrow else -self.qmax - 1
        else:
            self.qmin, self.qmax = 0, (1 << self.bits) - 1
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    def extra_config(self) -> dict[str, Any]:
        return {
            **super().extra_config(),
            "symmetric": self.symmetric,
            "channel_axis": self.channel_axis,
            "method": self.method,
            "percentile": self.percentile,
            "grid": self.grid,
            "narrow": self.narrow,
        }

    def channel_axis_(self) -> int | None:
        return self.channel_axis

    def code_range(self) -> tuple[int, int]:
        return self.qmin, self.qmax

    # ----------------------------------------------------------- parameters
    def _params_from_range(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and zero point covering ``[lo, hi]`` (``lo <= 0 <= hi``), per row."""
        if self.symmetric:
            amax = torch.maximum(-lo, hi)
            scale = (amax / self.qmax).clamp_min(MIN_SCALE)
            zero = torch.zeros_like(scale)
        else:
            scale = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(MIN_SCALE)
            zero = torch.clamp(self.qmin - torch.round(lo / scale), self.qmin, self.qmax)
        return scale, zero

    def _calibrate(self, rows: Tensor) -> None:
        if self.method == "percentile" and rows.shape[1] > 1:
            if self.symmetric:
                hi = kth_quantile(rows.abs(), self.percentile)
                lo = -hi
            else:
                lo = kth_quantile(rows, 1.0 - self.percentile).clamp(max=0.0)
                hi = kth_quantile(rows, self.percentile).clamp(min=0.0)
        else:
            lo = rows.amin(dim=1).clamp(max=0.0)
            hi = rows.amax(dim=1).clamp(min=0.0)
        if self.symmetric:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        scale, zero = self._params_from_range(lo, hi)
        if self.method == "mse" and self.grid > 1:
            scale, zero = self._mse_search(self._sample(rows), lo, hi)
        if self.channel_axis is None:
            scale, zero = scale.reshape(()), zero.reshape(())
        self.scale = scale.contiguous()
        self.zero_point = zero.to(torch.int32).contiguous()

    def _mse_search(self, rows: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Clipping ratios ``k/grid`` (widest first, so it wins ties) of ``[lo, hi]``, the
        lowest MSE per row wins. Short rows (:data:`DIRECT_VALUES_PER_CODE`) are fake-quantized
        with each candidate, long ones scored from sorted prefix sums; a chunk of candidates
        goes through one call."""
        c = lo.shape[0]
        ratios = torch.arange(self.grid, 0, -1, dtype=torch.float32, device=lo.device) / self.grid
        codes = torch.arange(self.qmin, self.qmax + 1, dtype=torch.float64, device=lo.device)
        direct = rows.shape[1] <= DIRECT_VALUES_PER_CODE * codes.numel()
        table = None if direct else SortedRows(rows)
        chunk = max(1, (1 << 22) // (rows.numel() if direct else c * codes.numel()))  # bounded memory
        best_err = torch.full((c,), math.inf, dtype=torch.float64, device=lo.device)
        scale = torch.ones(c, device=lo.device)
        zero = torch.zeros(c, device=lo.device)
        for start in range(0, self.grid, chunk):
            r = ratios[start : start + chunk][None, :]
            s, z = self._params_from_range(lo[:, None] * r, hi[:, None] * r)  # (C, G)
            if direct:
                err = self._candidate_mse(rows, s, z)
            else:
                sd, zd = s.double()[..., None], z.double()[..., None]
                err = table.mse((codes[:-1] - zd + 0.5) * sd, (codes - zd) * sd)  # (C, G)
            e, i = err.min(dim=1)
            better = e < best_err
            best_err = torch.where(better, e, best_err)
            scale = torch.where(better, s.gather(1, i[:, None])[:, 0], scale)
            zero = torch.where(better, z.gather(1, i[:, None])[:, 0], zero)
        self.search_mse = float(best_err.mean())
        return scale, zero

    def _candidate_mse(self, rows: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
        """``(C, G)`` float64 MSE of ``rows`` (C, N) fake-quantized with each of G candidates
        ``scale``/``zero`` (C, G), with the arithmetic of :meth:`forward`."""
        x = rows.float()[:, None, :]
        s, z = scale[..., None], zero[..., None]
        fq = torch.div(x, s).round_().add_(z).clamp_(self.qmin, self.qmax).sub_(z).mul_(s)
        return fq.sub_(x).square_().mean(dim=-1, dtype=torch.float64)

    # ------------------------------------------------------------------ codes
    def _broadcast(self, t: Tensor, like: Tensor) -> Tensor:
        if self.channel_axis is None:
            return t
        axis = self.channel_axis % like.dim() if like.dim() else 0
        if like.dim() == 0 or like.shape[axis] != t.numel():
            raise ValueError(
                f"per-channel quantizer calibrated for {t.numel()} channels on axis "
                f"{self.channel_axis}, got a tensor of shape {tuple(like.shape)}"
            )
        shape = [1] * like.dim()
        shape[axis] = t.numel()
        return t.reshape(shape)

    def quantize(self, x: Tensor) -> Tensor:
        self._check_calibrated()
        s = self._broadcast(self.scale, x)
        z = self._broadcast(self.zero_point, x).float()
        q = torch.clamp(torch.round(x.float() / s) + z, self.qmin, self.qmax)
        return q.to(torch.int32)

    def dequantize(self, codes: Tensor) -> Tensor:
        self._check_calibrated()
        s = self._broadcast(self.scale, codes)
        z = self._broadcast(self.zero_point, codes)
        return (codes.to(torch.int32) - z).float() * s

    def _fake_quantize(self, x: Tensor) -> Tensor:
        """Computed in place in float32 (the codes are integers, exact in float32): one buffer
        instead of the int32 round trip, about half the time."""
        self._check_calibrated()
        s = self._broadcast(self.scale, x)
        z = self._broadcast(self.zero_point, x).float()
        return torch.div(x.float(), s).round_().add_(z).clamp_(self.qmin, self.qmax).sub_(z).mul_(s)

    def clip_range(self) -> tuple[Tensor, Tensor]:
        """Representable range ``[(qmin - z)·s, (qmax - z)·s]`` (per channel when
        per-channel); inside it the rounding error is at most ``s/2``."""
        self._check_calibrated()
        z = self.zero_point.float()
        return (self.qmin - z) * self.scale, (self.qmax - z) * self.scale

    @torch.no_grad()
    def levels(self) -> Tensor:
        self._check_calibrated()
        codes = torch.arange(self.qmin, self.qmax + 1, device=self.scale.device)
        if self.channel_axis is None:
            return self.dequantize(codes)
        return (codes[None, :] - self.zero_point[:, None]).float() * self.scale[:, None]
