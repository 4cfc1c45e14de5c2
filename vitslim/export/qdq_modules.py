"""The modules a quantization point is swapped for while a quantized model is traced to ONNX.

Each computes what its fake quantizer computes, written with the ops the exporter turns into
QuantizeLinear/DequantizeLinear (uniform quantizers) or into an exact float32 threshold search
(the non-uniform ones); :mod:`vitslim.export.qdq` says which runs how.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
from torch import Tensor, nn
from torch.nn import functional as F

from vitslim.compress.quant.base import Quantizer, UnsignedQuantizer
from vitslim.compress.quant.fp8 import FP8_MAX, Fp8Quantizer, fp8_bytes, fp8_round
from vitslim.compress.quant.placement import QuantPoint, point_owner
from vitslim.compress.quant.twin_uniform import TwinUniformQuantizer
from vitslim.compress.quant.uniform import UniformQuantizer
from vitslim.errors import UserError

__all__ = [
    "ExportAffine",
    "ExportChannelAffine",
    "ExportFp8",
    "ExportTwinUniform",
    "ExportWeight",
    "ExportStepFunction",
    "step_tables",
    "export_module",
]

_qd = torch.ops.quantized_decomposed


def _container(qmin: int, qmax: int) -> tuple[torch.dtype, int, int]:
    """The 8-bit ONNX type holding codes ``[qmin, qmax]`` and its saturation range."""
    if qmin >= 0 and qmax <= 255:
        return torch.uint8, 0, 255
    if qmin >= -128 and qmax <= 127:
        return torch.int8, -128, 127
    raise UserError(f"codes [{qmin}, {qmax}] do not fit an 8-bit QuantizeLinear")


class ExportAffine(nn.Module):
    """Export form of a per-tensor uniform activation quantizer: ``[Clip] -> QuantizeLinear -> DequantizeLinear``."""

    def __init__(self, quantizer: UniformQuantizer) -> None:
        super().__init__()
        if quantizer.channel_axis is not None:
            raise ValueError("ExportAffine takes per-tensor quantizers; per-channel ones are ExportChannelAffine")
        qmin, qmax = quantizer.code_range()
        self.dtype, lo, hi = _container(qmin, qmax)
        self.qmin, self.qmax = qmin, qmax
        scale, zero = quantizer.scale.detach().float().cpu(), quantizer.zero_point.detach().cpu()
        self.scale, self.zero = float(scale), int(zero)
        # Clip to the representable range when Q's saturation is wider than the code range.
        self.clip = (qmin, qmax) != (lo, hi)
        self.low, self.high = float((qmin - zero.float()) * scale), float((qmax - zero.float()) * scale)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if self.clip:
            xf = torch.clamp(xf, self.low, self.high)
        q = _qd.quantize_per_tensor(xf, self.scale, self.zero, self.qmin, self.qmax, self.dtype)
        out = _qd.dequantize_per_tensor(q, self.scale, self.zero, self.qmin, self.qmax, self.dtype)
        return out.to(x.dtype)


class ExportFp8(nn.Module):
    """Export form of a per-tensor FP8 E4M3 activation quantizer: ``QuantizeLinear -> DequantizeLinear``
    with a float8e4m3fn zero point (opset >= 19; QuantizeLinear saturates to ±448 and rounds to
    nearest even, which is :class:`~vitslim.compress.quant.fp8.Fp8Quantizer`'s arithmetic).

    While the exporter traces it, the float8 Q/DQ ops; run eagerly, the quantizer's own cast
    (``torch.ops.quantized_decomposed`` rounds to integers before casting, right for the graph
    it traces to, not for its eager values).
    """

    def __init__(self, quantizer: Fp8Quantizer) -> None:
        super().__init__()
        if quantizer.channel_axis is not None:
            raise UserError("per-channel fp8 activations cannot be exported: use per-tensor fp8 on activation sites")
        self.scale = float(quantizer.scale.detach().float().cpu())

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if not torch.compiler.is_exporting():
            return (fp8_round(xf / self.scale) * self.scale).to(x.dtype)
        f8 = torch.float8_e4m3fn
        q = _qd.quantize_per_tensor(xf, self.scale, 0, -int(FP8_MAX), int(FP8_MAX), f8)
        return _qd.dequantize_per_tensor(q, self.scale, 0, -int(FP8_MAX), int(FP8_MAX), f8).to(x.dtype)


class ExportChannelAffine(nn.Module):
    """Export form of a per-channel uniform activation quantizer, emulated in float ops
    (``(clamp(round(x / s) + z, qmin, qmax) - z) · s``, the quantizer's own arithmetic): ONNX
    Runtime fuses Q/DQ into integer MatMuls that take one zero point per activation, and a
    per-axis one fails there at run time."""

    def __init__(self, quantizer: UniformQuantizer) -> None:
        super().__init__()
        self.axis = quantizer.channel_axis
        self.qmin, self.qmax = quantizer.code_range()
        self.register_buffer("scales", quantizer.scale.detach().float().cpu().clone())
        self.register_buffer("zeros", quantizer.zero_point.detach().float().cpu().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[self.axis % x.dim()] = -1
        s, z = self.scales.reshape(shape), self.zeros.reshape(shape)
        q = torch.clamp(torch.round(x.float() / s) + z, self.qmin, self.qmax)
        return ((q - z) * s).to(x.dtype)


class ExportTwinUniform(nn.Module):
    """Export form of a twin-uniform quantizer without a shift, as two uint8 Q/DQ branches that add up:

    * fine: ``DQ(Q(relu(x), Δ1, z1))`` with ``z1 = 255 - n``: QuantizeLinear's saturation at 255
      is ``min(round(x/Δ1), n)``, so a value past R1 contributes ``n·Δ1``, R2's first level;
    * coarse: ``DQ(Q(relu(x - n·Δ1), Δ2, z2))`` with ``z2 = 256 - n + j0``: saturation at 255 is
      R2's last level, and values in R1 contribute 0.

    Their sum is the quantizer's own value (:class:`TwinUniformQuantizer` rounds R2 relative to
    ``n·Δ1`` for exactly this), with no masks: ONNX Runtime runs Relu, Sub and the two
    QuantizeLinear ops element-wise, and the consuming MatMul once per branch (the graph pass).
    """

    def __init__(self, quantizer: TwinUniformQuantizer) -> None:
        super().__init__()
        if quantizer.shift:
            raise ValueError("ExportTwinUniform takes twin-uniform quantizers without a shift")
        delta1, delta2, n, j0 = quantizer.ranges()
        self.delta1 = float(delta1.detach().float().cpu())
        self.delta2 = float(delta2.detach().float().cpu())
        self.seam = n * self.delta1  # exact: a power-of-two multiple of a float32
        self.zero1 = 255 - n
        self.zero2 = 256 - n + j0

    @staticmethod
    def _qdq(x: Tensor, scale: float, zero: int) -> Tensor:
        q = _qd.quantize_per_tensor(x, scale, zero, 0, 255, torch.uint8)
        return _qd.dequantize_per_tensor(q, scale, zero, 0, 255, torch.uint8)

    def forward(self, x: Tensor) -> Tensor:
        xf = torch.relu(x.float())
        fine = self._qdq(xf, self.delta1, self.zero1)
        coarse = self._qdq(torch.relu(xf - self.seam), self.delta2, self.zero2)
        return (fine + coarse).to(x.dtype)


class ExportWeight(nn.Module):
    """Export form of a weight quantizer: the stored integer codes followed by DequantizeLinear.

    The forward ignores its input (the float weight) and returns the dequantized codes, which are
    exactly the fake-quantized weight.
    """

    def __init__(self, quantizer: UniformQuantizer | Fp8Quantizer, weight: Tensor) -> None:
        super().__init__()
        with torch.no_grad():
            codes = quantizer.quantize(weight.detach().float())
        if isinstance(quantizer, Fp8Quantizer):  # float8 bytes, zero point 0
            self.dtype, self.qmin, self.qmax = torch.float8_e4m3fn, -int(FP8_MAX), int(FP8_MAX)
            codes = fp8_bytes(codes)
            zeros = torch.zeros_like(quantizer.scale, dtype=torch.int64)
        else:
            self.qmin, self.qmax = quantizer.code_range()
            self.dtype, _, _ = _container(self.qmin, self.qmax)
            codes = codes.to(self.dtype)
            zeros = quantizer.zero_point.detach().to(torch.int64)
        self.register_buffer("codes", codes.cpu())
        self.register_buffer("scales", quantizer.scale.detach().float().cpu().clone())
        self.register_buffer("zeros", zeros.cpu().clone())
        self.axis = None if quantizer.channel_axis is None else quantizer.channel_axis % weight.dim()
        self.out_dtype = weight.dtype

    def forward(self, weight: Tensor) -> Tensor:
        if self.axis is None:
            scale, zero = float(self.scales), int(self.zeros)
            out = _qd.dequantize_per_tensor(self.codes, scale, zero, self.qmin, self.qmax, self.dtype)
        else:
            out = _qd.dequantize_per_channel(
                self.codes, self.scales, self.zeros, self.axis, self.qmin, self.qmax, self.dtype
            )
        return out.to(self.out_dtype)


# --------------------------------------------------------------------------- step functions
_SIGN = 0x7FFFFFFF


def _to_keys(x: Tensor) -> Tensor:
    """float32 -> int64 keys with the same order (``-0.0`` and ``0.0`` share key 0)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & _SIGN))


def _from_keys(keys: Tensor) -> Tensor:
    bits = torch.where(keys >= 0, keys, (-keys) | (1 << 31))
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)
    return bits.to(torch.int32).view(torch.float32)


@torch.no_grad()
def step_tables(quantizer: Quantizer) -> tuple[Tensor, Tensor]:
    """(ascending float32 thresholds, float32 levels) with ``forward(x) == levels[#{t <= x}]`` for
    every float32 ``x``: ``t_j`` is the smallest float32 whose fake-quantized value reaches the
    ``j``-th level, found by bisection over the ordered float32 bit patterns."""
    q = copy.deepcopy(quantizer).cpu()  # never move the model's own quantizer
    levels = q.levels().float().reshape(-1)
    top = q(torch.tensor([math.inf]))[0]
    levels = levels[levels <= top]  # levels no input reaches from above are dropped
    target = levels[1:]
    lo = torch.full_like(target, -math.inf)
    hi = torch.full_like(target, math.inf)
    lo_k, hi_k = _to_keys(lo), _to_keys(hi)
    below = q(lo) >= target  # reached already at -inf: threshold -inf
    for _ in range(40):
        if bool((hi_k - lo_k <= 1).all()):
            break
        mid = (lo_k + hi_k) // 2
        reached = q(_from_keys(mid)) >= target
        hi_k = torch.where(reached, mid, hi_k)
        lo_k = torch.where(reached, lo_k, mid)
    thresholds = torch.where(below, torch.full_like(target, -math.inf), _from_keys(hi_k))
    return thresholds, levels


class ExportStepFunction(nn.Module):
    """Exact emulation of any monotone fake quantizer with Gather/GreaterOrEqual/Where.

    A binary search over the padded thresholds (``steps = ceil(log2(levels))`` rounds), then a
    look-up of the level. Built by :meth:`from_quantizer`, which checks it against the quantizer.
    """

    def __init__(self, thresholds: Tensor, levels: Tensor) -> None:
        super().__init__()
        n = int(levels.numel())
        self.steps = math.ceil(math.log2(n)) if n > 1 else 0
        size = 1 << self.steps
        # table[c] = threshold of level c (c >= 1; entry 0 is unused), +inf past the last level
        table = torch.full((size, 1), math.inf)
        table[1 : thresholds.numel() + 1, 0] = thresholds
        lev = torch.full((size, 1), float(levels[-1]))
        lev[:n, 0] = levels
        self.register_buffer("thresholds", table)
        self.register_buffer("levels", lev)

    @classmethod
    @torch.no_grad()
    def from_quantizer(cls, quantizer: Quantizer, check: Tensor | None = None) -> ExportStepFunction:
        module = cls(*step_tables(quantizer))
        probe = _probe_values(module.thresholds)
        if check is not None:
            probe = torch.cat([probe, check.detach().float().cpu().reshape(-1)])
        if not torch.equal(module(probe), copy.deepcopy(quantizer).cpu()(probe)):
            raise RuntimeError(f"{quantizer.name} quantizer is not a monotone step function; cannot emulate it")
        return module

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if self.steps == 0:
            return torch.full_like(x, float(self.levels[0, 0]))
        first = 1 << (self.steps - 1)
        rank = torch.where(xf >= self.thresholds[first, 0], first, 0)
        for k in range(self.steps - 2, -1, -1):
            cand = rank + (1 << k)
            rank = torch.where(xf >= F.embedding(cand, self.thresholds).squeeze(-1), cand, rank)
        return F.embedding(rank, self.levels).squeeze(-1).to(x.dtype)


def _probe_values(thresholds: Tensor) -> Tensor:
    """Each finite threshold, its float32 neighbours and a spread of ordinary values."""
    t = thresholds.reshape(-1)
    t = t[torch.isfinite(t)]
    up = torch.nextafter(t, torch.full_like(t, math.inf))
    down = torch.nextafter(t, torch.full_like(t, -math.inf))
    spread = torch.cat([torch.linspace(-2, 2, 4001), torch.logspace(-30, 3, 2000), -torch.logspace(-30, 3, 200)])
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf])
    return torch.cat([t, up, down, spread, special]).float()


def export_module(model: nn.Module, point: QuantPoint) -> tuple[nn.Module, str, str]:
    """(export module, mode, container) of one enabled point."""
    q = point.quantizer
    if isinstance(q, Fp8Quantizer):
        if point.kind == "weight":
            return ExportWeight(q, point_owner(model, point).weight), "accelerated", "weight"
        return ExportFp8(q), "accelerated", "activation"
    if isinstance(q, UniformQuantizer):
        if point.kind == "weight":
            return ExportWeight(q, point_owner(model, point).weight), "accelerated", "weight"
        if q.channel_axis is not None:
            return ExportChannelAffine(q), "emulated", "activation"
        return ExportAffine(q), "accelerated", "activation"
    if isinstance(q, TwinUniformQuantizer) and not q.shift:
        return ExportTwinUniform(q), "accelerated", "activation"
    if isinstance(q, (UnsignedQuantizer, Quantizer)):
        return ExportStepFunction.from_quantizer(q), "emulated", "activation"
    raise UserError(f"cannot export quantization point {point.site}: {type(q).__name__} is not a quantizer")
