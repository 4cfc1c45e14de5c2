"""ONNX export of a model quantized by ``quantize_``, with explicit QuantizeLinear/DequantizeLinear.

``export_quantized_onnx(model, path, input_size)`` swaps every enabled quantization point's
fake quantizer for an export module while the model is traced, then rewrites the graph
(:mod:`vitslim.export.graph`) into the layout TensorRT's explicit quantization and ONNX
Runtime's QDQ fusions look for:

* **uniform weights** (``accelerated``): the integer codes the quantizer computes are stored
  as an int8 initializer (uint8 for a per-tensor asymmetric weight quantizer), transposed to
  ``[in, out]`` for MatMul, followed by a per-channel DequantizeLinear (``axis`` = the output
  channel axis of the stored tensor, no zero point: the weight quantizers are symmetric). Codes
  of fewer bits fit the int8 container exactly; with ``opset >= 21`` weights of <= 4 bits are
  stored as INT4;
* **uniform activations** (``accelerated``): ``QuantizeLinear -> DequantizeLinear`` on the
  input of the MatMul/Gemm: uint8 with the zero point for the (default) asymmetric quantizers,
  int8 with zero point 0 for symmetric ones. QuantizeLinear saturates to the full 8-bit range;
  when the quantizer's code range is narrower (fewer bits, or the symmetric ``[-127, 127]``),
  a ``Clip`` to the representable range ``[(qmin-z)·s, (qmax-z)·s]`` runs first, which gives
  exactly ``clamp(round(x/s) + z, qmin, qmax)``;
* **per-channel uniform activations** (``emulated``): the quantizer's arithmetic in float ops
  (Div/Round/Add/Clip/Sub/Mul): ONNX Runtime fuses Q/DQ into integer MatMuls that take one
  zero point per activation and fail at run time on a per-axis one;
* **twin-uniform activations without a shift** (PTQ4ViT's post-softmax quantizer; ``accelerated``):
  its two uniform ranges as two uint8 ``QuantizeLinear -> DequantizeLinear`` branches that add up
  (zero points chosen so that QuantizeLinear's own saturation does the range selection, see
  :class:`ExportTwinUniform`; no masks). The graph pass distributes the consuming
  MatMul over the sum, so each range runs as an integer MatMul of its own;
* **other non-uniform quantizers** (log2, logsqrt2, adalog, tanq, shifted twin_uniform; ``emulated``): every
  one is a monotone step function of its float32 input, so it is exported as a search over its
  exact float32 decision thresholds (found by bisection over the float32 values with the
  quantizer's own forward, then checked) and a look-up of its levels: ``ceil(log2(levels))``
  rounds of Gather/GreaterOrEqual/Where plus one Gather. No integer kernel runs them.

The rounding of QuantizeLinear (``x / s``, round half to even) is what the project's
:class:`~vitslim.compress.quant.UniformQuantizer` computes; ``torch.fake_quantize_*`` multiplies
by ``1/s`` instead and differs on ties, which is why it is not used here.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
from torch import Tensor, nn
from torch.nn import functional as F

from vitslim.compress.quant.base import Quantizer, UnsignedQuantizer
from vitslim.compress.quant.placement import QuantPoint, point_owner, quant_points
from vitslim.compress.quant.twin_uniform import TwinUniformQuantizer
from vitslim.compress.quant.uniform import UniformQuantizer
from vitslim.errors import UserError
from vitslim.files import atomic_path

from .graph import GraphReport, optimize_qdq_graph
from .onnx_export import light_optimize, trace_onnx

__all__ = [
    "QDQ_OPSET",
    "INT4_OPSET",
    "SiteExport",
    "QuantExport",
    "export_quantized_onnx",
    "qdq_export_mode",
    "ExportAffine",
    "ExportChannelAffine",
    "ExportTwinUniform",
    "ExportWeight",
    "ExportStepFunction",
]

#: Default opset of quantized exports (per-axis DequantizeLinear exists since 13).
QDQ_OPSET = 18
#: First opset whose DequantizeLinear takes INT4 inputs.
INT4_OPSET = 21
#: Suffix of the int8 code buffer of an exported weight, after its site's module name.
CODES_SUFFIX = ".weight_quant.quantizer.codes"

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

    def __init__(self, quantizer: UniformQuantizer, weight: Tensor) -> None:
        super().__init__()
        qmin, qmax = quantizer.code_range()
        self.dtype, _, _ = _container(qmin, qmax)
        self.qmin, self.qmax = qmin, qmax
        with torch.no_grad():
            codes = quantizer.quantize(weight.detach().float())
        self.register_buffer("codes", codes.to(self.dtype).cpu())
        self.register_buffer("scales", quantizer.scale.detach().float().cpu().clone())
        self.register_buffer("zeros", quantizer.zero_point.detach().to(torch.int64).cpu().clone())
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


# --------------------------------------------------------------------------- export mode
def _export_module(model: nn.Module, point: QuantPoint) -> tuple[nn.Module, str, str]:
    """(export module, mode, container) of one enabled point."""
    q = point.quantizer
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


@dataclass(frozen=True)
class SiteExport:
    """How one quantization site appears in the exported graph."""

    site: str
    kind: str
    quantizer: str
    bits: int
    mode: str  # "accelerated" (Q/DQ, integer kernels possible) or "emulated" (ordinary float ops)
    onnx_type: str | None = None  # int8 / uint8 / int4 for accelerated sites
    axis: int | None = None
    zero_point: int | None = None
    clipped: bool = False  # a Clip emulates a code range narrower than the 8-bit container
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuantExport:
    """The result of :func:`export_quantized_onnx`."""

    path: Path
    opset: int
    input_size: tuple[int, ...]
    sites: list[SiteExport]
    graph: GraphReport
    notes: list[str] = field(default_factory=list)

    @property
    def accelerated(self) -> list[str]:
        return [s.site for s in self.sites if s.mode == "accelerated"]

    @property
    def emulated(self) -> list[str]:
        return [s.site for s in self.sites if s.mode == "emulated"]

    @property
    def tensorrt_int8_ready(self) -> bool:
        """Whether every Q/DQ site follows TensorRT's explicit INT8 rules (signed, zero point 0,
        per-tensor activations) and nothing is emulated."""
        return not self.tensorrt_issues

    @property
    def tensorrt_issues(self) -> list[str]:
        issues = []
        asym = [s.site for s in self.sites if s.mode == "accelerated" and s.onnx_type == "uint8"]
        if asym:
            issues.append(
                f"{len(asym)} site(s) use uint8 with a zero point (asymmetric quantizers, e.g. {asym[0]}); "
                "TensorRT's explicit quantization takes int8 with zero point 0 only (use symmetric activations)"
            )
        per_channel = [s.site for s in self.sites if s.kind != "weight" and s.axis is not None]
        if per_channel:
            issues.append(f"{len(per_channel)} per-channel activation site(s), e.g. {per_channel[0]}")
        if self.emulated:
            issues.append(f"{len(self.emulated)} emulated site(s) run as float ops, not integer kernels")
        return issues

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "input_size": list(self.input_size),
            "accelerated": len(self.accelerated),
            "emulated": len(self.emulated),
            "tensorrt_int8_ready": self.tensorrt_int8_ready,
            "tensorrt_issues": self.tensorrt_issues,
            "graph": self.graph.to_dict(),
            "notes": list(self.notes),
            "sites": [s.to_dict() for s in self.sites],
        }


@contextlib.contextmanager
def qdq_export_mode(model: nn.Module) -> Iterator[dict[str, tuple[QuantPoint, nn.Module, str]]]:
    """Swap every enabled point's quantizer for its export module inside the ``with``.

    Yields ``{site: (point, export module, mode)}``; the original quantizers are restored after.
    """
    points = {name: p for name, p in quant_points(model).items() if p.enabled}
    originals = {name: p.quantizer for name, p in points.items()}
    modules = {}
    try:
        for name, point in points.items():
            module, mode, _ = _export_module(model, point)
            modules[name] = (point, module, mode)
        for point, module, _ in modules.values():
            point.quantizer = module
        yield modules
    finally:
        for name, point in points.items():
            point.quantizer = originals[name]


def _site_record(
    point: QuantPoint, quantizer: Quantizer, module: nn.Module, mode: str, graph: GraphReport
) -> SiteExport:
    common = dict(site=point.site, kind=point.kind, quantizer=quantizer.name, bits=quantizer.bits, mode=mode)
    if isinstance(module, ExportWeight):
        info = graph.weights.get(point.site[: -len(".weight")] + CODES_SUFFIX, {})
        onnx_type = info.get("type", str(module.dtype).removeprefix("torch."))
        note = None
        if quantizer.bits < 8 and onnx_type != "int4":
            note = f"{quantizer.bits}-bit codes stored in an int8 container"
        if info.get("consumer"):
            note = f"{note + '; ' if note else ''}DequantizeLinear feeds {info['consumer']}"
        axis = None if module.axis is None else info.get("axis", module.axis)
        return SiteExport(**common, onnx_type=onnx_type, axis=axis, zero_point=0, note=note)
    if isinstance(module, ExportAffine):
        note = None
        if module.clip:
            note = f"Clip to codes [{module.qmin}, {module.qmax}] before QuantizeLinear"
        return SiteExport(
            **common,
            onnx_type=str(module.dtype).removeprefix("torch."),
            zero_point=module.zero,
            clipped=module.clip,
            note=note,
        )
    if isinstance(module, ExportTwinUniform):
        note = (
            f"twin uniform: two uint8 Q/DQ ranges (scales {module.delta1:.3g}, {module.delta2:.3g}, zero points "
            f"{module.zero1}, {module.zero2}) added; a consuming MatMul runs once per range"
        )
        return SiteExport(**common, onnx_type="uint8", zero_point=module.zero1, note=note)
    if isinstance(module, ExportChannelAffine):
        note = "per-channel activation emulated in float ops (integer MatMuls take one activation zero point)"
        return SiteExport(**common, axis=module.axis, note=note)
    return SiteExport(**common, note=f"exact step-function emulation, {module.steps} search rounds")


def export_quantized_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int],
    *,
    opset: int = QDQ_OPSET,
    dynamic_batch: bool = True,
    int4_weights: bool = True,
) -> QuantExport:
    """Export a model quantized by ``quantize_`` to ``path`` with explicit Q/DQ (module docstring).

    Disabled points are left out (float). With ``opset >= 21`` and ``int4_weights``, weights of
    <= 4 bits are stored as INT4. The graph is checked by ``onnx.checker``; the file is written
    atomically. Validate it with :func:`vitslim.export.validate.validate_onnx`.
    """
    path = Path(path)
    if opset < 13:
        raise UserError(f"quantized ONNX export needs opset >= 13 (per-axis DequantizeLinear), got {opset}")
    if not quant_points(model):
        raise UserError("model is not quantized: run quantize_(model, cfg, data) first, or use export_onnx")
    model = model.eval()
    use_int4 = int4_weights and opset >= INT4_OPSET
    quantizers = {name: p.quantizer for name, p in quant_points(model).items() if p.enabled}
    with qdq_export_mode(model) as modules:
        graph = trace_onnx(model, input_size, opset=opset, dynamic_batch=dynamic_batch)
        light_optimize(graph)
        proto = ir.serde.serialize_model(graph)
    int4_sites = {
        name for name, (point, _, _) in modules.items() if point.kind == "weight" and quantizers[name].bits <= 4
    }
    int4_names = {name[: -len(".weight")] + CODES_SUFFIX for name in int4_sites} if use_int4 else set()
    report = optimize_qdq_graph(proto, int4_initializers=int4_names)
    onnx.checker.check_model(proto)
    with atomic_path(path) as staged:
        onnx.save(proto, staged)
    sites = [
        _site_record(point, quantizers[name], module, mode, report) for name, (point, module, mode) in modules.items()
    ]
    notes = []
    if any(s.kind == "weight" and s.bits <= 4 for s in sites) and not use_int4:
        notes.append(f"weights of <= 4 bits are stored in int8 containers (INT4 needs opset >= {INT4_OPSET})")
    if any(s.clipped for s in sites):
        notes.append("activations with fewer than 8 bits (or a narrow signed range) get a Clip before QuantizeLinear")
    if report.folded_scales:
        notes.append(
            f"{report.folded_scales} attention scale multiplication(s) folded into the query's DequantizeLinear "
            "scale (float rounding may differ by one ulp from PyTorch)"
        )
    emulated = [s for s in sites if s.mode == "emulated"]
    if emulated:
        notes.append(f"{len(emulated)} non-uniform site(s) are emulated with float ops (no integer kernel)")
    return QuantExport(path, opset, tuple(input_size), sites, report, notes)
