"""ONNX graph passes putting Q/DQ where TensorRT and ONNX Runtime fuse them into integer kernels.

:func:`optimize_qdq_graph` rewrites a freshly exported quantized graph in place:

1. ``int8 W -> DequantizeLinear(axis 0) -> Transpose([1, 0]) -> MatMul`` becomes
   ``int8 Wᵀ -> DequantizeLinear(axis 1) -> MatMul`` (the weight is stored ``[in, out]``);
2. the all-zero zero point of a weight DequantizeLinear is dropped (symmetric weights);
3. ``DequantizeLinear -> Mul(scalar constant) -> MatMul`` (the attention's ``q · scale``) folds the
   scalar into the DequantizeLinear scale, so the MatMul reads the DequantizeLinear directly;
4. ``[Clip ->] QuantizeLinear -> DequantizeLinear -> Transpose -> MatMul`` (the key in ``q @ kᵀ``)
   becomes ``Transpose -> [Clip ->] QuantizeLinear -> DequantizeLinear -> MatMul`` (exact for
   per-tensor Q/DQ), and two Transposes in a row become one (:func:`fuse_transposes`): the key
   reaches the MatMul through one ``Transpose(0, 2, 3, 1)``, the form OpenVINO's fused attention takes;
5. ``Add(DequantizeLinear a, DequantizeLinear b) -> MatMul(·, B)`` (a twin-uniform activation's
   two ranges) becomes ``Add(MatMul(DQ a, B), MatMul(DQ b, B'))``, ``B'`` a copy of ``B``'s
   DequantizeLinear, so that each MatMul reads DequantizeLinear nodes only;
6. named weight initializers of <= 4-bit codes are stored as INT4 (opset >= 21);
7. unused initializers are removed and the nodes re-sorted topologically.

:func:`graph_report` counts what the graph holds (Q/DQ pairs, integer initializers, Scatter ops).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphReport", "fuse_transposes", "optimize_qdq_graph", "graph_report", "weight_dequantizers"]

#: Storage types of quantized codes (float8 E4M3 included: the FP8 exports' codes).
INTEGER_TYPES = {
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT4: "int4",
    TensorProto.FLOAT8E4M3FN: "float8e4m3fn",
}
MATMUL_OPS = ("MatMul", "Gemm")


@dataclass
class GraphReport:
    """Counts of a quantized ONNX graph (and what :func:`optimize_qdq_graph` changed)."""

    quantize_linear: int = 0
    dequantize_linear: int = 0
    qdq_pairs: int = 0
    weight_dequantizers: int = 0
    integer_initializers: dict[str, int] = field(default_factory=dict)
    scatter_ops: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    transposed_weights: int = 0
    folded_scales: int = 0
    moved_transposes: int = 0
    int4_weights: int = 0
    #: MatMuls run once per range of a twin-uniform input (rule 5)
    split_matmuls: int = 0
    #: weight initializer -> {"type", "axis", "shape", "consumer"}
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Graph:
    """Producer / consumer look-ups over a GraphProto (rebuilt after each rewrite)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        outputs = {o.name for o in graph.output}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        for name in outputs:
            self.consumers[name].append(None)  # type: ignore[arg-type]  # graph outputs count as uses

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0] is not None else None

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, inp in enumerate(node.input):
            if inp == old:
                node.input[i] = new
    for out in graph.output:
        if out.name == old:
            raise ValueError(f"cannot rename graph output {old}")


def _unique(graph: onnx.GraphProto, base: str) -> str:
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    name, i = base, 0
    while name in names:
        i += 1
        name = f"{base}_{i}"
    return name


def _transpose_weights(graph: onnx.GraphProto) -> int:
    g = _Graph(graph)
    done = 0
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits:
            continue
        init = g.inits[dq.input[0]]
        tr = g.only_consumer(dq.output[0])
        if len(init.dims) != 2 or tr is None or tr.op_type != "Transpose" or list(_attr(tr, "perm", [])) != [1, 0]:
            continue
        users = g.consumers.get(tr.output[0], [])
        if not users or any(u is None or u.op_type != "MatMul" or u.input[1] != tr.output[0] for u in users):
            continue
        if len(g.consumers.get(init.name, [])) != 1:
            continue
        codes = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(codes.T), init.name))
        _set_attr(dq, "axis", 1 - (_attr(dq, "axis", 1) % 2))
        _rename_uses(graph, tr.output[0], dq.output[0])
        graph.node.remove(tr)
        done += 1
    return done


def _drop_weight_zero_points(graph: onnx.GraphProto) -> None:
    g = _Graph(graph)
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits or len(dq.input) < 3:
            continue
        zero = g.constant(dq.input[2])
        if zero is not None and not np.any(zero):
            del dq.input[2]


def _fold_scalar_mul(graph: onnx.GraphProto) -> int:
    g = _Graph(graph)
    done = 0
    for mul in list(graph.node):
        if mul.op_type != "Mul":
            continue
        for side in (0, 1):
            dq = g.producer.get(mul.input[side])
            factor = g.constant(mul.input[1 - side])
            if dq is None or dq.op_type != "DequantizeLinear" or factor is None or factor.size != 1:
                continue
            scale = g.constant(dq.input[1])
            if scale is None or scale.size != 1 or g.only_consumer(dq.output[0]) is not mul:
                continue
            users = g.consumers.get(mul.output[0], [])
            if not users or any(u is None or u.op_type not in MATMUL_OPS for u in users):
                continue
            folded = np.asarray(scale, dtype=np.float32) * np.asarray(factor, dtype=np.float32).reshape(())
            name = _unique(graph, f"{dq.output[0]}_scale")
            graph.initializer.append(numpy_helper.from_array(folded.astype(np.float32).reshape(scale.shape), name))
            dq.input[1] = name
            _rename_uses(graph, mul.output[0], dq.output[0])
            graph.node.remove(mul)
            done += 1
            break
    return done


def _scalar_clip(g: _Graph, node: onnx.NodeProto | None) -> bool:
    """Whether ``node`` is a Clip with constant scalar bounds (elementwise: it commutes with a Transpose)."""
    if node is None or node.op_type != "Clip":
        return False
    bounds = [g.constant(name) for name in node.input[1:] if name]
    return all(b is not None and b.size == 1 for b in bounds)


def _move_transposes(graph: onnx.GraphProto) -> int:
    g = _Graph(graph)
    done = 0
    for tr in list(graph.node):
        if tr.op_type != "Transpose":
            continue
        dq = g.producer.get(tr.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or g.only_consumer(dq.output[0]) is not tr:
            continue
        q = g.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or g.only_consumer(q.output[0]) is not dq:
            continue
        scales = [g.constant(n.input[1]) for n in (q, dq)]
        if any(s is None or s.size != 1 for s in scales):
            continue  # per-axis Q/DQ does not commute with a transpose
        users = g.consumers.get(tr.output[0], [])
        if not users or any(u is None or u.op_type not in MATMUL_OPS for u in users):
            continue
        # an elementwise Clip to the code range (narrow or sub-8-bit codes) moves up with the pair
        clip = g.producer.get(q.input[0])
        head = clip if _scalar_clip(g, clip) and g.only_consumer(clip.output[0]) is q else q
        t_out, dq_out = tr.output[0], dq.output[0]
        for user in users:
            for i, inp in enumerate(user.input):
                if inp == t_out:
                    user.input[i] = dq_out
        tr.input[0] = head.input[0]
        head.input[0] = t_out
        done += 1
    return done


def fuse_transposes(graph: onnx.GraphProto) -> int:
    """Every ``Transpose(p1) -> Transpose(p2)`` becomes one ``Transpose(p1 ∘ p2)`` reading the first
    one's input, or nothing when they cancel out (the first stays while something else reads it);
    returns how many were fused."""
    g = _Graph(graph)
    done = 0
    for second in list(graph.node):
        if second.op_type != "Transpose":
            continue
        first = g.producer.get(second.input[0])
        if first is None or first.op_type != "Transpose":
            continue
        p1, p2 = _attr(first, "perm"), _attr(second, "perm")
        if p1 is None or p2 is None:
            continue  # a default (reversing) perm needs the rank
        perm = [int(p1[i]) for i in p2]
        single = g.only_consumer(first.output[0]) is second
        if perm == sorted(perm) and not any(o.name == second.output[0] for o in graph.output):
            _rename_uses(graph, second.output[0], first.input[0])  # the two cancel out
            graph.node.remove(second)
        else:
            _set_attr(second, "perm", perm)
            second.input[0] = first.input[0]
        if single:
            graph.node.remove(first)
        g = _Graph(graph)
        done += 1
    return done


def _split_summed_matmuls(graph: onnx.GraphProto) -> int:
    g = _Graph(graph)
    done = 0
    for add in list(graph.node):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        dqs = [g.producer.get(name) for name in add.input]
        if any(
            dq is None or dq.op_type != "DequantizeLinear" or g.only_consumer(dq.output[0]) is not add for dq in dqs
        ):
            continue
        users = g.consumers.get(add.output[0], [])
        if not users or any(
            u is None or u.op_type != "MatMul" or list(u.input).count(add.output[0]) != 1 for u in users
        ):
            continue
        for matmul in users:
            side = list(matmul.input).index(add.output[0])
            other = matmul.input[1 - side]
            other_dq = g.producer.get(other)
            outputs = []
            for i, dq in enumerate(dqs):
                operand = other
                if i and other_dq is not None and other_dq.op_type == "DequantizeLinear":
                    copy = onnx.NodeProto()
                    copy.CopyFrom(other_dq)
                    copy.name = _unique(graph, f"{other_dq.name or other}_copy")
                    operand = copy.output[0] = _unique(graph, f"{other}_copy")
                    graph.node.append(copy)
                inputs = [dq.output[0], operand] if side == 0 else [operand, dq.output[0]]
                out = _unique(graph, f"{matmul.output[0]}_range{i}")
                graph.node.append(helper.make_node("MatMul", inputs, [out], name=_unique(graph, out)))
                outputs.append(out)
            graph.node.append(
                helper.make_node("Add", outputs, [matmul.output[0]], name=_unique(graph, f"{matmul.output[0]}_sum"))
            )
            graph.node.remove(matmul)
        graph.node.remove(add)
        g = _Graph(graph)
        done += 1
    return done


def _int4_tensor(name: str, codes: np.ndarray) -> onnx.TensorProto:
    """An INT4 tensor of ``codes`` packed two to a byte in ``raw_data`` (first code in the low
    nibble, as ONNX lays them out): half a byte per code in the file."""
    nibbles = (codes.astype(np.int8).reshape(-1) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)


def _to_int4(graph: onnx.GraphProto, names: Iterable[str]) -> int:
    names = set(names)
    done = 0
    for init in graph.initializer:
        if init.name in names and init.data_type == TensorProto.INT8:
            codes = numpy_helper.to_array(init)
            if codes.min() < -8 or codes.max() > 7:
                raise ValueError(f"{init.name} holds codes outside int4: [{codes.min()}, {codes.max()}]")
            init.CopyFrom(_int4_tensor(init.name, codes))
            done += 1
    return done


def _prune_and_sort(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a missing input after the Q/DQ rewrite")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
    del graph.value_info[:]  # shapes of rewired tensors changed; runtimes infer them again


def weight_dequantizers(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Each DequantizeLinear reading an integer initializer: type, axis, shape and consumer op."""
    g = _Graph(model.graph)
    out = {}
    for dq in model.graph.node:
        if dq.op_type == "DequantizeLinear" and dq.input[0] in g.inits:
            init = g.inits[dq.input[0]]
            users = g.consumers.get(dq.output[0], [])
            out[init.name] = {
                "type": INTEGER_TYPES.get(init.data_type, str(init.data_type)),
                "axis": _attr(dq, "axis", 1),
                "shape": list(init.dims),
                "consumer": ",".join(sorted({u.op_type for u in users if u is not None})),
            }
    return out


def graph_report(model: onnx.ModelProto) -> GraphReport:
    """Counts of Q/DQ nodes, pairs, integer initializers and Scatter ops in ``model``."""
    g = _Graph(model.graph)
    ops = Counter(n.op_type for n in model.graph.node)
    pairs = sum(
        1
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        and any(u is not None and u.op_type == "DequantizeLinear" for u in g.consumers.get(n.output[0], []))
    )
    ints = Counter(INTEGER_TYPES[t.data_type] for t in model.graph.initializer if t.data_type in INTEGER_TYPES)
    weights = weight_dequantizers(model)
    return GraphReport(
        quantize_linear=ops.get("QuantizeLinear", 0),
        dequantize_linear=ops.get("DequantizeLinear", 0),
        qdq_pairs=pairs,
        weight_dequantizers=len(weights),
        integer_initializers=dict(ints),
        scatter_ops=sum(v for k, v in ops.items() if k.startswith("Scatter")),
        ops=dict(sorted(ops.items())),
        weights=weights,
    )


def optimize_qdq_graph(model: onnx.ModelProto, int4_initializers: Iterable[str] = ()) -> GraphReport:
    """Rewrite ``model`` in place (module docstring) and return its :func:`graph_report`."""
    graph = model.graph
    transposed = _transpose_weights(graph)
    _drop_weight_zero_points(graph)
    folded = _fold_scalar_mul(graph)
    moved = _move_transposes(graph)
    fuse_transposes(graph)
    split = _split_summed_matmuls(graph)
    int4 = _to_int4(graph, int4_initializers)
    _prune_and_sort(graph)
    report = graph_report(model)
    report.transposed_weights, report.folded_scales, report.moved_transposes, report.int4_weights = (
        transposed,
        folded,
        moved,
        int4,
    )
    report.split_matmuls = split
    return report
