"""FP8 E4M3 quantizer (``float8_e4m3fn``: 4 exponent bits, 3 mantissa bits, no infinities).

``x̂ = s · fp8(clamp(x / s, -448, 448))`` where ``fp8`` rounds to the nearest E4M3 value, ties to
even (torch's ``float8_e4m3fn`` cast, ONNX's saturating ``QuantizeLinear``). Symmetric, zero
exact; per tensor or per channel. The scale maps the (clipped) absolute maximum onto 448.

Codes are the ordinal of the value: ``sign(x̂) · bits(|x̂ / s|)`` with ``bits`` the 7-bit
magnitude pattern (0..126; 127 is NaN), so codes are monotone in the value and lie in
``[-126, 126]``; :func:`fp8_bytes` turns them into the float8 bytes a file stores.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import DEFAULT_SEARCH_SAMPLES, MIN_SCALE, Quantizer
from .registry import register_quantizer

__all__ = ["FP8_MAX", "Fp8Quantizer", "fp8_bytes", "fp8_round"]

#: Largest finite float8_e4m3fn value.
FP8_MAX = 448.0
#: Largest magnitude bit pattern of a finite float8_e4m3fn value (0x7E = 448).
_MAX_PATTERN = 0x7E
FP8_METHODS = ("minmax", "mse")


def fp8_round(u: Tensor) -> Tensor:
    """``u`` (float32, already divided by the scale) saturated to ±448 and rounded to E4M3, as float32."""
    return u.float().clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def fp8_bytes(codes: Tensor) -> Tensor:
    """float8_e4m3fn tensor of ordinal ``codes`` (sign in bit 7, magnitude pattern below)."""
    magnitude = codes.abs().to(torch.int32)
    pattern = torch.where(codes < 0, magnitude | 0x80, magnitude).to(torch.uint8)
    return pattern.view(torch.float8_e4m3fn)


@register_quantizer("fp8")
class Fp8Quantizer(Quantizer):
    """FP8 E4M3 fake quantizer (module docstring); ``bits`` must be 8.

    * ``channel_axis``: ``None`` per tensor, otherwise one scale per index of that axis
      (weights: 0, the output rows);
    * ``method``: ``"minmax"`` scale = absolute maximum / 448; ``"mse"`` the clipping ratio
      among ``k/grid`` for ``k`` in ``[grid/2, grid]`` with the lowest MSE (widest on ties).

    ``symmetric`` is accepted for the weight defaults and must be true. Buffer: ``scale``
    (float32, shape ``()`` or ``(C,)``).
    """

    def __init__(
        self,
        bits: int = 8,
        *,
        symmetric: bool = True,
        channel_axis: int | None = None,
        method: str = "minmax",
        grid: int = 32,
        search_samples: int | None = DEFAULT_SEARCH_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__(bits, search_samples=search_samples, seed=seed)
        if self.bits != 8:
            raise ValueError(f"fp8 (E4M3) has 8 bits, got {bits}")
        if not symmetric:
            raise ValueError("fp8 (E4M3) is symmetric: symmetric must be true")
        if method not in FP8_METHODS:
            raise ValueError(f"method must be one of {FP8_METHODS}, got {method!r}")
        if int(grid) < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        self.channel_axis = None if channel_axis is None else int(channel_axis)
        self.method = method
        self.grid = int(grid)
        self.register_buffer("scale", torch.ones(()))

    def extra_config(self) -> dict[str, Any]:
        return {
            **super().extra_config(),
            "symmetric": True,
            "channel_axis": self.channel_axis,
            "method": self.method,
            "grid": self.grid,
        }

    def channel_axis_(self) -> int | None:
        return self.channel_axis

    def code_range(self) -> tuple[int, int]:
        return -_MAX_PATTERN, _MAX_PATTERN

    # ------------------------------------------------------------ calibration
    def clip_ratios(self) -> Tensor:
        """Candidate clipping ratios of the ``mse`` method, widest first (it wins ties)."""
        return torch.arange(self.grid, self.grid // 2 - 1, -1, dtype=torch.float32) / self.grid

    def set_amax(self, amax: Tensor) -> None:
        """Scales mapping ``amax`` (one per row, or a scalar) onto 448; marks the quantizer calibrated."""
        scale = (amax.float() / FP8_MAX).clamp_min(MIN_SCALE)
        self.scale = (scale.reshape(()) if self.channel_axis is None else scale.reshape(-1)).contiguous()
        self.calibrated_flag = torch.tensor(True, device=self.calibrated_flag.device)

    @staticmethod
    def clip_errors(rows: Tensor, amax: Tensor) -> Tensor:
        """MSE (float64) of each row of ``rows`` (C, N) quantized with the clipped maximum ``amax`` (C,)."""
        s = (amax.float() / FP8_MAX).clamp_min(MIN_SCALE)[:, None]
        return (fp8_round(rows / s) * s - rows).square().mean(dim=1, dtype=torch.float64)

    def _calibrate(self, rows: Tensor) -> None:
        amax = rows.abs().amax(dim=1)
        if self.method == "mse":
            sample = self._sample(rows)
            errs = torch.stack([self.clip_errors(sample, amax * r) for r in self.clip_ratios().tolist()])
            best_err, best = errs.min(dim=0)  # first minimum: the widest range on ties
            amax = amax * self.clip_ratios().to(amax.device)[best]
            self.search_mse = float(best_err.mean())
        self.set_amax(amax)

    # ------------------------------------------------------------------ codes
    def _broadcast(self, x: Tensor) -> Tensor:
        if self.channel_axis is None:
            return self.scale
        axis = self.channel_axis % x.dim() if x.dim() else 0
        if x.dim() == 0 or x.shape[axis] != self.scale.numel():
            raise ValueError(
                f"per-channel quantizer calibrated for {self.scale.numel()} channels on axis "
                f"{self.channel_axis}, got a tensor of shape {tuple(x.shape)}"
            )
        shape = [1] * x.dim()
        shape[axis] = -1
        return self.scale.reshape(shape)

    def quantize(self, x: Tensor) -> Tensor:
        self._check_calibrated()
        f8 = (x.float() / self._broadcast(x)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        pattern = f8.view(torch.uint8).to(torch.int32)
        magnitude = pattern & 0x7F
        return torch.where(pattern & 0x80 != 0, -magnitude, magnitude)

    def dequantize(self, codes: Tensor) -> Tensor:
        self._check_calibrated()
        return fp8_bytes(codes).float() * self._broadcast(codes)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        self._check_calibrated()
        s = self._broadcast(x)
        return fp8_round(x.float() / s) * s

    @torch.no_grad()
    def levels(self) -> Tensor:
        self._check_calibrated()
        codes = torch.arange(-_MAX_PATTERN, _MAX_PATTERN + 1, device=self.scale.device)
        values = fp8_bytes(codes).float()
        if self.channel_axis is None:
            return torch.unique(values * self.scale)
        return torch.unique(values)[None, :] * self.scale[:, None]
