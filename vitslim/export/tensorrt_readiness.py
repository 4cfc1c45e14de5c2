"""Whether an ONNX graph is laid out for TensorRT's explicit INT8, read from the graph itself.

``tensorrt_readiness(model_or_path)`` returns a :class:`Readiness`: named :class:`Finding`\\ s
(empty means ready) and what the check saw (quantized and float linear layers, attention blocks,
head size, tokens). The checks, by name (:data:`CHECKS`):

* ``opset``: the default-domain opset is below 17 (``LayerNormalization`` needs 17);
* ``layernorm``: a LayerNorm decomposed into ReduceMean/Sub/... instead of ``LayerNormalization``
  (TensorRT keeps the fused op accurate in FP16);
* ``zero_point``: a QuantizeLinear/DequantizeLinear with a non-zero zero point (TensorRT:
  "Non-zero zero point is not supported");
* ``qdq_type``: a Q/DQ whose integer type is not int8 (uint8, int4, or no zero point, which
  means uint8 in QuantizeLinear);
* ``activation_axis``: a per-axis QuantizeLinear on an activation (TensorRT: per-tensor only);
* ``weight_axis``: a per-axis weight DequantizeLinear whose axis is not the output channel of the
  Conv/MatMul/Gemm reading it;
* ``weight_only``: a Conv/MatMul/Gemm with a dequantized weight but a float input (no INT8 kernel);
* ``clip``: a Clip feeding a QuantizeLinear (a code range narrower than int8's [-128, 127]; the
  Q/DQ fusions want the QuantizeLinear right after the layer it quantizes);
* ``emulated``: a quantizer emulated in float ops (Round, or a threshold search with
  GreaterOrEqual): it runs as float layers;
* ``attention``: an attention block (``MatMul -> [Mul/Div/Add] -> Softmax -> MatMul``) without
  Q/DQ on both inputs of the first MatMul, on the softmax output and on v: TensorRT's fused INT8
  attention needs all four;
* ``head_size``: attention with a head size other than 16, 32 or 64 (the fused INT8 kernel's);
* ``tokens``: attention over more than 512 tokens (the fused INT8 kernel's limit), or a token count
  shape inference cannot tell.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

__all__ = ["CHECKS", "FUSED_HEAD_SIZES", "MAX_FUSED_TOKENS", "Finding", "Readiness", "tensorrt_readiness"]

CHECKS = (
    "opset",
    "layernorm",
    "zero_point",
    "qdq_type",
    "activation_axis",
    "weight_axis",
    "weight_only",
    "clip",
    "emulated",
    "attention",
    "head_size",
    "tokens",
)
#: Head sizes of TensorRT's fused INT8 attention kernel, and its longest sequence.
FUSED_HEAD_SIZES = (16, 32, 64)
MAX_FUSED_TOKENS = 512
#: The opset of ``LayerNormalization``.
LAYERNORM_OPSET = 17
LINEAR_OPS = ("Conv", "MatMul", "Gemm")
#: Ops allowed between the first attention MatMul and its Softmax (scale, mask, log-size bias).
SCORE_OPS = ("Mul", "Div", "Add")
SHOWN = 3  # example nodes named per finding
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Finding:
    """One reason TensorRT would reject the graph or not run it the INT8 way it was exported for."""

    check: str
    message: str
    nodes: tuple[str, ...] = ()

    def __str__(self) -> str:
        shown = ", ".join(self.nodes[:SHOWN]) + (f" (+{len(self.nodes) - SHOWN})" if len(self.nodes) > SHOWN else "")
        return f"{self.check}: {self.message}" + (f" [{shown}]" if shown else "")

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "message": self.message, "nodes": list(self.nodes)}


@dataclass
class Readiness:
    """The findings (empty: ready) and what the check saw."""

    findings: list[Finding] = field(default_factory=list)
    opset: int = 0
    quantized_linears: list[str] = field(default_factory=list)
    float_linears: list[str] = field(default_factory=list)
    attention_blocks: int = 0
    head_sizes: list[int] = field(default_factory=list)
    max_tokens: int | None = None

    @property
    def ready(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "findings": [f.to_dict() for f in self.findings],
            "opset": self.opset,
            "quantized_linears": len(self.quantized_linears),
            "float_linears": list(self.float_linears),
            "attention_blocks": self.attention_blocks,
            "head_sizes": sorted(set(self.head_sizes)),
            "max_tokens": self.max_tokens,
        }


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
        return None

    def const_type(self, name: str) -> int | None:
        if name in self.inits:
            return self.inits[name].data_type
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return helper.get_attribute_value(node.attribute[0]).data_type
        return None

    def op(self, name: str) -> str | None:
        node = self.producer.get(name)
        return None if node is None else node.op_type

    def is_weight(self, name: str) -> bool:
        """A constant, or a QuantizeLinear/DequantizeLinear of one."""
        node = self.producer.get(name)
        if name in self.inits or (node is not None and node.op_type == "Constant"):
            return True
        return node is not None and node.op_type in QDQ_OPS and self.is_weight(node.input[0])


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _qdq_findings(g: _Graph) -> list[Finding]:
    nonzero, wrong_type, per_axis_act = [], [], []
    for node in g.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and np.any(zero):
            nonzero.append(_label(node))
        if node.op_type == "QuantizeLinear":
            kind = g.const_type(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            kind = kind or _attr(node, "output_dtype") or TensorProto.UINT8
            scale = g.constant(node.input[1])
            if (scale is None or scale.size != 1) and not g.is_weight(node.input[0]):
                per_axis_act.append(_label(node))
        else:  # a stored weight's type, or its zero point's; one after a QuantizeLinear is checked there
            kind = g.const_type(node.input[0])
            if kind is None and len(node.input) > 2 and node.input[2]:
                kind = g.const_type(node.input[2])
        if kind not in (TensorProto.INT8, None):
            wrong_type.append(f"{_label(node)} ({TensorProto.DataType.Name(kind).lower()})")
    findings = []
    if nonzero:
        message = "non-zero zero point (TensorRT takes symmetric int8 only)"
        findings.append(Finding("zero_point", message, tuple(nonzero)))
    if wrong_type:
        findings.append(Finding("qdq_type", "Q/DQ type is not int8", tuple(wrong_type)))
    if per_axis_act:
        findings.append(Finding("activation_axis", "per-axis QuantizeLinear on an activation", tuple(per_axis_act)))
    return findings


def _output_axis(node: onnx.NodeProto, rank: int) -> int:
    """The output-channel axis of the weight (input 1) of a Conv/MatMul/Gemm."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return rank - 1


def _linear_findings(g: _Graph, seen: Readiness) -> list[Finding]:
    wrong_axis, weight_only = [], []
    for node in g.graph.node:
        if node.op_type not in LINEAR_OPS or len(node.input) < 2 or not g.is_weight(node.input[1]):
            continue
        wdq = g.producer.get(node.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear":
            seen.float_linears.append(_label(node))
            continue
        if g.op(node.input[0]) != "DequantizeLinear":
            weight_only.append(_label(node))
        else:
            seen.quantized_linears.append(_label(node))
        scale = g.constant(wdq.input[1])
        weight = g.constant(wdq.input[0])
        if weight is None:
            weight = g.constant(g.producer[wdq.input[0]].input[0]) if g.op(wdq.input[0]) == "QuantizeLinear" else None
        if scale is None or scale.size == 1 or weight is None:
            continue
        axis = _attr(wdq, "axis", 1) % weight.ndim
        want = _output_axis(node, weight.ndim)
        if axis != want or scale.size != weight.shape[want]:
            wrong_axis.append(f"{_label(node)} (axis {axis}, output channels on {want})")
    findings = []
    if wrong_axis:
        findings.append(
            Finding("weight_axis", "per-channel weight scales not on the output channel", tuple(wrong_axis))
        )
    if weight_only:
        findings.append(
            Finding(
                "weight_only",
                "int8 weight but a float input: no INT8 kernel runs this layer (quantize its input or keep it float)",
                tuple(weight_only),
            )
        )
    return findings


def _layernorm_findings(g: _Graph) -> list[Finding]:
    """``x - ReduceMean(x)``: the first step of a decomposed LayerNorm."""
    found = []
    for node in g.graph.node:
        if node.op_type != "ReduceMean":
            continue
        for user in g.consumers.get(node.output[0], []):
            if user.op_type == "Sub" and list(user.input) == [node.input[0], node.output[0]]:
                found.append(_label(node))
    if not found:
        return []
    return [Finding("layernorm", "LayerNorm decomposed into elementwise ops, not LayerNormalization", tuple(found))]


def _dequantized(g: _Graph, name: str) -> bool:
    """``name`` comes from ``QuantizeLinear -> DequantizeLinear`` directly."""
    dq = g.producer.get(name)
    return dq is not None and dq.op_type == "DequantizeLinear" and g.op(dq.input[0]) == "QuantizeLinear"


def _score_matmul(g: _Graph, name: str, depth: int = 4) -> onnx.NodeProto | None:
    """The MatMul computing the attention scores ``name`` reaches a Softmax as, through at most
    ``depth`` scale/mask/bias ops."""
    node = g.producer.get(name)
    if node is None or node.op_type == "MatMul":
        return node
    if node.op_type not in SCORE_OPS or depth == 0:
        return None
    found = (_score_matmul(g, i, depth - 1) for i in node.input if not g.is_weight(i))
    return next((m for m in found if m is not None), None)


def _value_matmul(g: _Graph, softmax: onnx.NodeProto) -> tuple[onnx.NodeProto | None, bool]:
    """The MatMul reading the softmax map (through Clip/Q/DQ), and whether exactly
    ``QuantizeLinear -> DequantizeLinear`` lies between them."""
    name, chain = softmax.output[0], []
    while True:
        users = g.consumers.get(name, [])
        if len(users) != 1:
            return None, False
        node = users[0]
        if node.op_type == "MatMul":
            return (node, chain == list(QDQ_OPS)) if node.input[0] == name else (None, False)
        if node.op_type not in ("Clip", *QDQ_OPS):
            return None, False
        chain.append(node.op_type)
        name = node.output[0]


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred shapes (batch fixed to 1 so that reshapes resolve)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  (shape inference fails on unusual graphs: tokens become unknown)
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _attention_findings(g: _Graph, model: onnx.ModelProto, seen: Readiness) -> list[Finding]:
    softmaxes = [n for n in g.graph.node if n.op_type == "Softmax"]
    blocks = []
    for sm in softmaxes:
        first = _score_matmul(g, sm.input[0])
        second, map_qdq = _value_matmul(g, sm)
        if first is not None and second is not None:
            blocks.append((sm, first, second, map_qdq))
    seen.attention_blocks = len(blocks)
    if not blocks:
        return []
    missing: list[str] = []
    bad_heads: list[str] = []
    long_seq: list[str] = []
    unknown: list[str] = []
    shapes = _shapes(model)
    tokens = []
    for sm, first, second, map_qdq in blocks:
        gaps = [
            what
            for what, ok in (
                ("q", _dequantized(g, first.input[0])),
                ("k", _dequantized(g, first.input[1])),
                ("softmax", map_qdq),
                ("v", _dequantized(g, second.input[1])),
            )
            if not ok
        ]
        if gaps:
            missing.append(f"{_label(sm)} (no Q/DQ on {', '.join(gaps)})")
        q_shape, s_shape = shapes.get(first.input[0]), shapes.get(first.output[0])
        head = q_shape[-1] if q_shape else None
        seq = s_shape[-1] if s_shape else None
        if head is None or seq is None:
            unknown.append(_label(sm))
            continue
        seen.head_sizes.append(head)
        tokens.append(seq)
        if head not in FUSED_HEAD_SIZES:
            bad_heads.append(f"{_label(sm)} (head size {head})")
        if seq > MAX_FUSED_TOKENS:
            long_seq.append(f"{_label(sm)} ({seq} tokens)")
    seen.max_tokens = max(tokens) if tokens else None
    findings = []
    if missing:
        findings.append(
            Finding(
                "attention",
                "attention without Q/DQ on q, k, the softmax output and v "
                "(TensorRT's fused INT8 attention needs all four)",
                tuple(missing),
            )
        )
    if bad_heads:
        sizes = "/".join(map(str, FUSED_HEAD_SIZES))
        findings.append(Finding("head_size", f"head size is not {sizes} (fused INT8 attention)", tuple(bad_heads)))
    if long_seq:
        findings.append(
            Finding("tokens", f"more than {MAX_FUSED_TOKENS} tokens (fused INT8 attention)", tuple(long_seq))
        )
    if unknown:
        findings.append(Finding("tokens", "head size or token count unknown (shape inference)", tuple(unknown)))
    return findings


def tensorrt_readiness(model: onnx.ModelProto | str | Path) -> Readiness:
    """Check an ONNX graph (a ModelProto or a file) against TensorRT's explicit INT8 rules
    (module docstring). A graph without any Q/DQ is reported as such (one ``qdq_type`` finding)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    g = _Graph(model)
    seen = Readiness(opset=_opset(model))
    findings: list[Finding] = []
    if seen.opset < LAYERNORM_OPSET:
        findings.append(Finding("opset", f"opset {seen.opset} < {LAYERNORM_OPSET} (LayerNormalization)"))
    findings += _layernorm_findings(g)
    ops = {n.op_type for n in model.graph.node}
    if not ops & {"QuantizeLinear", "DequantizeLinear"}:
        findings.append(Finding("qdq_type", "no QuantizeLinear/DequantizeLinear: nothing runs in INT8"))
    findings += _qdq_findings(g)
    findings += _linear_findings(g, seen)
    clipped = [
        _label(n) for n in model.graph.node if n.op_type == "QuantizeLinear" and g.op(n.input[0]) == "Clip"
    ]
    if clipped:
        findings.append(
            Finding("clip", "Clip before QuantizeLinear (codes narrower than int8's [-128, 127])", tuple(clipped))
        )
    emulated = [_label(n) for n in model.graph.node if n.op_type in ("Round", "GreaterOrEqual")]
    if emulated:
        findings.append(Finding("emulated", "quantizer emulated in float ops (no integer kernel)", tuple(emulated)))
    findings += _attention_findings(g, model, seen)
    seen.findings = findings
    return seen
