"""TanQ-style tangent-compander quantizer (inspired by DopQ-ViT's TanQ).

The exact equation of the DopQ-ViT paper is not available to us, so this is *our*
"TanQ-style" definition, built to share its property: levels dense near 0 **and**
near 1 for post-softmax values.

With ``u = clamp((x + shift)/s, 0, 1)`` and ``α in (0, π)``:

* compander ``c(u) = (tan(α(u - ½)) / tan(α/2) + 1) / 2`` maps ``[0, 1]`` onto
  ``[0, 1]`` with slope ``α/sin(α)`` at both ends and ``α/(2 tan(α/2))`` in the middle
  (end/middle density ratio ``1/cos²(α/2)``);
* ``c`` is quantized uniformly: ``q = round(c(u)·(2^b - 1))``, ``q in [0, 2^b-1]``;
* expansion with the inverse ``u = ½ + arctan((2c - 1)·tan(α/2))/α``,
  ``x̂ = s·u(q/(2^b-1)) - shift``.

``α -> 0`` gives the uniform quantizer on ``[0, s]``. Levels and decision thresholds
are computed once per ``α`` in float64 (2^b values), quantization is a
``torch.bucketize`` against the thresholds (identical to rounding ``c(u)``, but exact
and monotone), dequantization a table look-up. Code 0 is exactly 0 and code
``2^b - 1`` exactly ``s``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .base import UnsignedQuantizer
from .registry import register_quantizer

__all__ = ["TanQuantizer", "compander", "expander"]

#: Smallest α used numerically (α below it is treated as this value: uniform to ~1e-13).
ALPHA_MIN = 1e-6
#: Largest α of the default search (end/middle level-density ratio 1000).
ALPHA_MAX = 2.0 * math.acos(1000.0**-0.5)


def compander(u: Tensor, alpha: float) -> Tensor:
    """``c(u) = (tan(α(u-½))/tan(α/2) + 1)/2``."""
    a = max(float(alpha), ALPHA_MIN)
    return (torch.tan(a * (u - 0.5)) / math.tan(a / 2.0) + 1.0) / 2.0


def expander(c: Tensor, alpha: float) -> Tensor:
    """Inverse of :func:`compander`: ``u = ½ + arctan((2c-1)·tan(α/2))/α``."""
    a = max(float(alpha), ALPHA_MIN)
    return 0.5 + torch.atan((2.0 * c - 1.0) * math.tan(a / 2.0)) / a


@register_quantizer("tanq")
class TanQuantizer(UnsignedQuantizer):
    """TanQ-style quantizer (see the module docstring for the definition).

    Search (MSE): ``α`` over ``alpha_steps`` values whose end/middle level-density ratio
    ``1/cos²(α/2)`` is log-spaced in ``[1, 1000]`` (``α`` from ~0 to ``ALPHA_MAX`` ≈ 3.08),
    jointly with ``s`` over ``max·ratio`` for ``scale_steps`` ratios in ``[0.25, 1]``.
    Pass ``alpha=`` to fix ``α`` (then only ``s`` is searched).
    Buffers: ``scale``, ``alpha`` (float32).
    """

    param_names = ("scale", "alpha")

    def __init__(
        self,
        bits: int = 8,
        *,
        alpha: float | None = None,
        alpha_steps: int = 32,
        scale_steps: int = 16,
        shift: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(bits, shift=shift, **kwargs)
        if alpha is not None and not 0.0 < float(alpha) < math.pi:
            raise ValueError(f"alpha must lie in (0, pi), got {alpha}")
        if int(alpha_steps) < 1 or int(scale_steps) < 1:
            raise ValueError("alpha_steps and scale_steps must be >= 1")
        self.fixed_alpha = None if alpha is None else float(alpha)
        self.alpha_steps = int(alpha_steps)
        self.scale_steps = int(scale_steps)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("alpha", torch.tensor(ALPHA_MIN if alpha is None else float(alpha)))
        self._tables: dict[tuple[float, int, str], tuple[Tensor, Tensor]] = {}

    def extra_config(self) -> dict[str, Any]:
        return {
            **super().extra_config(),
            "alpha": self.fixed_alpha,
            "alpha_steps": self.alpha_steps,
            "scale_steps": self.scale_steps,
        }

    # ----------------------------------------------------------------- tables
    def _table(self, alpha: float, device: torch.device) -> tuple[Tensor, Tensor]:
        """(levels in ``[0,1]``, 2^b; decision thresholds, 2^b - 1), float32."""
        key = (float(alpha), self.bits, str(device))
        if key not in self._tables:
            n = (1 << self.bits) - 1
            c = torch.arange(n + 1, dtype=torch.float64)
            levels = expander(c / n, alpha)
            levels[0], levels[-1] = 0.0, 1.0
            thresholds = expander((c[:-1] + 0.5) / n, alpha)
            if len(self._tables) > 64:
                self._tables.clear()
            self._tables[key] = (levels.float().to(device), thresholds.float().to(device))
        return self._tables[key]

    def levels_unit(self) -> Tensor:
        """The 2^b levels of ``u`` in ``[0, 1]`` for the current ``α``."""
        return self._table(float(self.alpha), self.alpha.device)[0]

    def _encode(self, u: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        _, thr = self._table(float(p["alpha"]), u.device)
        v = torch.clamp(u / p["scale"], 0.0, 1.0)
        return torch.bucketize(v, thr, right=True)

    def _decode(self, codes: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        levels, _ = self._table(float(p["alpha"]), codes.device)
        return p["scale"] * levels[codes.to(torch.int64)]

    def _alpha_grid(self) -> list[float]:
        if self.fixed_alpha is not None:
            return [self.fixed_alpha]
        n = self.alpha_steps
        out = []
        for i in range(n):
            ratio = 1000.0 ** (i / max(n - 1, 1))  # end/middle density ratio
            out.append(max(2.0 * math.acos(ratio**-0.5), ALPHA_MIN))
        return out

    def _buckets(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        levels, thr = self._table(float(p["alpha"]), p["scale"].device)
        return p["scale"] * thr.double(), p["scale"] * levels.double()

    def _candidates(self, u: Tensor) -> Iterable[dict[str, Any]]:
        top = self._positive_max(u)
        n = self.scale_steps
        scales = [top * (1.0 - 0.75 * i / max(n - 1, 1)) for i in range(n)]
        for a in self._alpha_grid():
            at = torch.tensor(a)
            for s in scales:
                yield {"scale": torch.tensor(s), "alpha": at}
