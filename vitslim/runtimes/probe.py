"""What pays on this machine: a few seconds of measurement on the model's own shapes.

For each installed runtime that runs files, two small ONNX graphs per layer kind are timed side by
side (:mod:`vitslim.runtimes.timing`: interleaved, paired rounds): a block's first MLP Linear
(``x @ W`` on ``tokens x dim`` inputs) and one attention matmul (``q @ kᵀ`` per head), each in
float and with explicit int8 Q/DQ (activations per tensor, weights per output channel, q and kᵀ
symmetric: what vitslim's W8A8 exports, fused by ONNX Runtime into ``MatMulIntegerToFloat``).
Their ratio, judged against its own noise (:mod:`vitslim.evaluate.speedup`), says whether int8
pays for that layer kind, runtime and batch size here; OpenVINO's default float precision (bf16
on CPUs that have it) is compared with f32 the same way. Each graph is one layer: the
quantization (or precision conversion) at its input weighs more than inside a whole model, so a
layer kind that pays here pays in the model; one that does not may still be close.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from vitslim.errors import UserError
from vitslim.evaluate.speedup import speedup
from vitslim.runtimes import Deployed
from vitslim.runtimes.timing import time_variants

__all__ = ["LAYERS", "ProbeShape", "probe_shape", "probe_graphs", "probe", "int8_pays"]

#: the layer kinds probed
LAYERS = ("linear", "attention")
OPSET = 18
#: the ONNX IR version of opset 18 (onnx.helper would write its newest, which runtimes may not read yet)
IR_VERSION = 8


@dataclass(frozen=True)
class ProbeShape:
    """The model's shapes that matter for its matmuls: tokens per image, width, MLP hidden width, heads."""

    tokens: int
    dim: int
    hidden: int
    heads: int


def probe_shape(model: torch.nn.Module, input_size: tuple[int, ...]) -> ProbeShape:
    """The shapes of the model's first MLP Linear (its input: tokens x dim) and attention heads,
    read from one forward pass on a random image."""
    fc1 = next((m for n, m in model.named_modules() if n.endswith("mlp.fc1")), None)
    attn = next((m for m in model.modules() if hasattr(m, "num_heads")), None)
    if fc1 is None or attn is None:
        raise UserError("the model has no '*.mlp.fc1' Linear or no module with 'num_heads': not a ViT vitslim probes")
    seen: list[tuple[int, ...]] = []
    handle = fc1.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, *input_size, device=next(model.parameters()).device))
    finally:
        handle.remove()
    return ProbeShape(tokens=seen[0][1], dim=fc1.in_features, hidden=fc1.out_features, heads=int(attn.num_heads))


def _qdq(name: str, zero_point_type: int, scale: float, axis_scales: np.ndarray | None = None) -> tuple[list, list]:
    """QuantizeLinear -> DequantizeLinear of tensor ``name`` (per tensor; ``axis_scales``: weights,
    stored as int8 codes and only dequantized), its nodes and initializers."""
    if axis_scales is not None:
        inits = [
            numpy_helper.from_array(axis_scales.astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.zeros(axis_scales.shape, np.int8), f"{name}_zp"),
        ]
        return [
            helper.make_node("DequantizeLinear", [name, f"{name}_scale", f"{name}_zp"], [f"{name}_dq"], axis=1)
        ], inits
    zp = np.array(128, np.uint8) if zero_point_type == TensorProto.UINT8 else np.array(0, np.int8)
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
        numpy_helper.from_array(zp, f"{name}_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [name, f"{name}_scale", f"{name}_zp"], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [f"{name}_dq"]),
    ]
    return nodes, inits


def _model(nodes: list, inits: list, inputs: list, output: str, name: str) -> onnx.ModelProto:
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, name, inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def probe_graphs(shape: ProbeShape, batch: int, seed: int = 0) -> dict[str, tuple[onnx.ModelProto, tuple[int, ...]]]:
    """``{"<layer>-<fp32|int8>": (graph, input size of one image)}`` at a static ``batch``."""
    rng = np.random.default_rng(seed)
    graphs = {}
    tokens, dim, hidden, heads = shape.tokens, shape.dim, shape.hidden, shape.heads
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, tokens, dim])
    weight = rng.standard_normal((dim, hidden)).astype(np.float32) * dim**-0.5
    for precision in ("fp32", "int8"):
        if precision == "fp32":
            nodes, inits, a, w = [], [numpy_helper.from_array(weight, "w")], "x", "w"
        else:
            scales = np.abs(weight).max(axis=0) / 127
            codes = np.clip(np.round(weight / scales), -127, 127).astype(np.int8)
            nodes, inits = _qdq("x", TensorProto.UINT8, 4 / 255)  # u8 around 128: [-2, 2]
            w_nodes, w_inits = _qdq("w", TensorProto.INT8, 0.0, axis_scales=scales)
            nodes, inits = nodes + w_nodes, [*inits, numpy_helper.from_array(codes, "w"), *w_inits]
            a, w = "x_dq", "w_dq"
        nodes.append(helper.make_node("MatMul", [a, w], ["y"]))  # no bias: ORT would fold it into a float Gemm
        graphs[f"linear-{precision}"] = (_model(nodes, inits, [x], "y", "linear"), (tokens, dim))
    head_dim = dim // heads
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [batch, heads, tokens, head_dim])
    for precision in ("fp32", "int8"):
        nodes = [helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 1, 3, 2])]
        inits, a, b = [], "q", "kt"
        if precision == "int8":  # q and kᵀ quantized as they enter the matmul, as vitslim exports them
            for name in ("q", "kt"):
                more_nodes, more_inits = _qdq(name, TensorProto.INT8, 4 / 127)
                nodes, inits = nodes + more_nodes, inits + more_inits
            a, b = "q_dq", "kt_dq"
        nodes.append(helper.make_node("MatMul", [a, b], ["y"]))
        graphs[f"attention-{precision}"] = (_model(nodes, inits, [q], "y", "attention"), (heads, tokens, head_dim))
    return graphs


def probe(
    shape: ProbeShape,
    runtimes: Sequence[str],
    batch_sizes: Sequence[int] = (1, 16),
    threads: int = 0,
    runs: int = 15,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per runtime, layer kind and batch size: float against int8 (``int8_pays``), and for runtimes
    with a reduced default float precision (OpenVINO's bf16) that precision against f32
    (``bf16_pays``); every row with both p50s, the ratio, its per-round range and its verdict."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batch_sizes:
            deployed = []
            for name, (graph, input_size) in probe_graphs(shape, batch).items():
                path = Path(tmp) / f"{name}-b{batch}.onnx"
                onnx.save(graph, path)
                fp32 = name.endswith("fp32")
                deployed.append(Deployed(name, None, path, input_size, torch.device("cpu"), baseline=fp32))
            latency = time_variants(deployed, runtimes, [batch], threads, warmup=2, runs=runs, progress=progress)
            for runtime in runtimes:
                for layer in LAYERS:
                    rows += _rows(latency, runtime, layer, batch)
    return rows


def _rows(latency: dict[str, list], runtime: str, layer: str, batch: int) -> list[dict[str, Any]]:
    """The probe's rows of one runtime, layer kind and batch size from :func:`time_variants`' latency."""
    float_entries = [e for e in latency[f"{layer}-fp32"] if e.runtime == runtime]
    (int8,) = [e for e in latency[f"{layer}-int8"] if e.runtime == runtime]
    deployed_float = float_entries[0]
    rows = [_row(runtime, layer, batch, "int8", deployed_float, int8)]
    if len(float_entries) > 1:  # also timed in exact f32: the default is a reduced precision (bf16)
        reduced = deployed_float.device.removeprefix("CPU (").removesuffix(")")
        rows.append(_row(runtime, layer, batch, reduced, float_entries[1], deployed_float))
    return rows


def _row(runtime: str, layer: str, batch: int, precision: str, base: Any, faster: Any) -> dict[str, Any]:
    judged = speedup(base.to_dict(), faster.to_dict())
    return {
        "runtime": runtime,
        "layer": layer,
        "batch": batch,
        "precision": precision,
        "against": base.device,
        "base_p50_ms": base.p50_ms,
        "p50_ms": faster.p50_ms,
        "speedup": judged.ratio,
        "round_range": [judged.low, judged.high],
        "verdict": judged.verdict,
        "pays": judged.verdict == "faster",
    }


def int8_pays(rows: list[dict[str, Any]], runtime: str, layer: str, batch: int) -> bool | None:
    """Whether the probe found int8 faster for ``layer`` in ``runtime`` at ``batch`` (None: not probed)."""
    return next(
        (
            r["pays"]
            for r in rows
            if (r["runtime"], r["layer"], r["batch"], r["precision"]) == (runtime, layer, batch, "int8")
        ),
        None,
    )
