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
  stored as INT4 (half the bytes; ONNX has no type between 4 and 8 bits, so 5- to 7-bit codes
  stay in int8);
* **fp8 weights and activations** (``accelerated``): FP8 E4M3 codes stored as a float8e4m3fn
  initializer with a per-channel DequantizeLinear, activations as ``QuantizeLinear ->
  DequantizeLinear`` with a float8e4m3fn zero point (opset >= 19). Only GPUs with FP8 units
  (TensorRT on Hopper/Ada) run them as FP8; the CPU runtimes dequantize to float;
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
  :class:`~.qdq_modules.ExportTwinUniform`; no masks). The graph pass distributes the consuming
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
from torch import nn

from vitslim.compress.quant.base import Quantizer
from vitslim.compress.quant.fp8 import Fp8Quantizer
from vitslim.compress.quant.placement import QuantPoint, quant_points
from vitslim.errors import UserError
from vitslim.files import atomic_path

from .graph import GraphReport, optimize_qdq_graph
from .onnx_export import light_optimize, trace_onnx
from .qdq_modules import (
    ExportAffine,
    ExportChannelAffine,
    ExportFp8,
    ExportTwinUniform,
    ExportWeight,
    export_module,
)
from .tensorrt_readiness import Readiness, tensorrt_readiness

__all__ = [
    "QDQ_OPSET",
    "INT4_OPSET",
    "FP8_OPSET",
    "qdq_opset",
    "SiteExport",
    "QuantExport",
    "export_quantized_onnx",
    "qdq_export_mode",
]

#: Default opset of quantized exports (per-axis DequantizeLinear exists since 13).
QDQ_OPSET = 18
#: First opset whose DequantizeLinear takes INT4 inputs.
INT4_OPSET = 21
#: First opset whose QuantizeLinear/DequantizeLinear take float8 types.
FP8_OPSET = 19
#: ONNX name of the float8 type the fp8 sites store.
FP8_TYPE = "float8e4m3fn"
#: Suffix of the int8 code buffer of an exported weight, after its site's module name.
CODES_SUFFIX = ".weight_quant.quantizer.codes"


@dataclass(frozen=True)
class SiteExport:
    """How one quantization site appears in the exported graph."""

    site: str
    kind: str
    quantizer: str
    bits: int
    mode: str  # "accelerated" (Q/DQ, integer kernels possible) or "emulated" (ordinary float ops)
    onnx_type: str | None = None  # int8 / uint8 / int4 / float8e4m3fn for accelerated sites
    axis: int | None = None
    zero_point: int | None = None
    clipped: bool = False  # a Clip emulates a code range narrower than the 8-bit container
    note: str | None = None
    scale: float | None = None  # the scale of a per-tensor Q/DQ site (per-channel: one per ``axis`` index)

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
    tensorrt: Readiness
    notes: list[str] = field(default_factory=list)

    @property
    def accelerated(self) -> list[str]:
        return [s.site for s in self.sites if s.mode == "accelerated"]

    @property
    def emulated(self) -> list[str]:
        return [s.site for s in self.sites if s.mode == "emulated"]

    @property
    def tensorrt_int8_ready(self) -> bool:
        """Whether the graph passes every check of :func:`~.tensorrt_readiness.tensorrt_readiness`."""
        return self.tensorrt.ready

    @property
    def tensorrt_issues(self) -> list[str]:
        """The readiness findings, one line each (check name first)."""
        return [str(f) for f in self.tensorrt.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "input_size": list(self.input_size),
            "accelerated": len(self.accelerated),
            "emulated": len(self.emulated),
            "tensorrt_int8_ready": self.tensorrt_int8_ready,
            "tensorrt_issues": self.tensorrt_issues,
            "tensorrt": self.tensorrt.to_dict(),
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
            module, mode, _ = export_module(model, point)
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
        onnx_type = info.get("type", FP8_TYPE if module.dtype == torch.float8_e4m3fn else str(module.dtype)[6:])
        note = None
        if quantizer.bits < 8 and onnx_type != "int4":
            note = f"{quantizer.bits}-bit codes stored in an int8 container"
        if info.get("consumer"):
            note = f"{note + '; ' if note else ''}DequantizeLinear feeds {info['consumer']}"
        axis = None if module.axis is None else info.get("axis", module.axis)
        scale = float(module.scales) if module.axis is None else None
        return SiteExport(**common, onnx_type=onnx_type, axis=axis, zero_point=0, note=note, scale=scale)
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
            scale=module.scale,
        )
    if isinstance(module, ExportFp8):
        return SiteExport(**common, onnx_type=FP8_TYPE, zero_point=0, scale=module.scale)
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


def _low_bit_weight(point: QuantPoint, quantizer: Quantizer) -> bool:
    return point.kind == "weight" and not isinstance(quantizer, Fp8Quantizer) and quantizer.bits <= 4


def qdq_opset(model: nn.Module, int4_weights: bool = True) -> int:
    """The lowest opset that holds ``model``'s quantized export: :data:`INT4_OPSET` when a weight
    has <= 4 bits (and ``int4_weights``), :data:`FP8_OPSET` with fp8 sites, else :data:`QDQ_OPSET`."""
    points = [p for p in quant_points(model).values() if p.enabled]
    if int4_weights and any(_low_bit_weight(p, p.quantizer) for p in points):
        return INT4_OPSET
    if any(isinstance(p.quantizer, Fp8Quantizer) for p in points):
        return FP8_OPSET
    return QDQ_OPSET


def export_quantized_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    int4_weights: bool = True,
) -> QuantExport:
    """Export a model quantized by ``quantize_`` to ``path`` with explicit Q/DQ (module docstring).

    Disabled points are left out (float). ``opset``: by default :func:`qdq_opset`. With
    ``opset >= 21`` and ``int4_weights``, weights of <= 4 bits are stored as INT4. The graph is
    checked by ``onnx.checker``; the file is written atomically. Validate it with
    :func:`vitslim.export.validate.validate_onnx`.
    """
    path = Path(path)
    if not quant_points(model):
        raise UserError("model is not quantized: run quantize_(model, cfg, data) first, or use export_onnx")
    opset = qdq_opset(model, int4_weights) if opset is None else opset
    if opset < 13:
        raise UserError(f"quantized ONNX export needs opset >= 13 (per-axis DequantizeLinear), got {opset}")
    model = model.eval()
    use_int4 = int4_weights and opset >= INT4_OPSET
    quantizers = {name: p.quantizer for name, p in quant_points(model).items() if p.enabled}
    if opset < FP8_OPSET and any(isinstance(q, Fp8Quantizer) for q in quantizers.values()):
        raise UserError(f"fp8 quantizers need opset >= {FP8_OPSET} (float8 QuantizeLinear), got {opset}")
    with qdq_export_mode(model) as modules:
        graph = trace_onnx(model, input_size, opset=opset, dynamic_batch=dynamic_batch)
        light_optimize(graph)
        proto = ir.serde.serialize_model(graph)
    int4_sites = {name for name, (point, _, _) in modules.items() if _low_bit_weight(point, quantizers[name])}
    int4_names = {name[: -len(".weight")] + CODES_SUFFIX for name in int4_sites} if use_int4 else set()
    report = optimize_qdq_graph(proto, int4_initializers=int4_names)
    onnx.checker.check_model(proto)
    with atomic_path(path) as staged:
        onnx.save(proto, staged)
    sites = [
        _site_record(point, quantizers[name], module, mode, report) for name, (point, module, mode) in modules.items()
    ]
    notes = []
    if int4_sites and not use_int4:
        notes.append(f"weights of <= 4 bits are stored in int8 containers (INT4 needs opset >= {INT4_OPSET})")
    if any(s.clipped for s in sites):
        notes.append("activations with fewer than 8 bits (or a narrow signed range) get a Clip before QuantizeLinear")
    if report.folded_scales:
        notes.append(
            f"{report.folded_scales} attention scale multiplication(s) folded into the query's DequantizeLinear "
            "scale (float rounding may differ by one ulp from PyTorch)"
        )
    if any(s.onnx_type == FP8_TYPE for s in sites):
        notes.append(
            "fp8 (E4M3) Q/DQ: FP8 kernels need a GPU with FP8 units (TensorRT on Hopper/Ada); "
            "the CPU runtimes dequantize the codes and compute in float"
        )
    emulated = [s for s in sites if s.mode == "emulated"]
    if emulated:
        notes.append(f"{len(emulated)} non-uniform site(s) are emulated with float ops (no integer kernel)")
    return QuantExport(path, opset, tuple(input_size), sites, report, tensorrt_readiness(proto), notes)
