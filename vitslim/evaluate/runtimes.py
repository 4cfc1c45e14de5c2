"""Creating inference sessions for the runtimes vitslim measures."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnxruntime as ort


def holds_float8(model: str | Path | bytes) -> bool:
    """Whether the ONNX model (a file or serialized model) quantizes to float8 (its Q/DQ zero points);
    False for what does not parse (ONNX Runtime then says why it cannot load it)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = (
            onnx.load_from_string(model)
            if isinstance(model, bytes)
            else onnx.load(str(model), load_external_data=False)
        )
    except (DecodeError, OSError):
        return False
    float8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
    return any(t.data_type in float8 for t in proto.graph.initializer) or any(
        a.t.data_type in float8 for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute
    )


def _options(threads: int, optimize: bool, model: str | Path | bytes) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        # weight-only DequantizeLinear -> MatMul becomes MatMulNBits; ONNX Runtime's default accuracy
        # level (4) quantizes its float input to int8 inside the kernel, which the graph does not say
        # (W4A16 logits moved by 1%): level 1 computes in float32, as written (as fast on the demo model)
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if optimize and holds_float8(model):
        # ONNX Runtime 1.31 fuses float8 Q/DQ around a MatMul into MatMulIntegerToFloat, which takes
        # 8-bit integers only, and rejects the graph: keep its other optimizations, not the Q/DQ fusions
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def ort_session(
    path: str | Path | bytes, threads: int = 0, providers: list | None = None, optimize: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``path`` (a file or serialized model); ``threads`` = 0: ORT picks;
    ``providers``: execution providers (names or ``(name, options)``), default the CPU one.
    ``optimize=False`` turns ORT's graph optimizations off: Q/DQ pairs then run as written (float
    emulation) instead of being fused into integer kernels."""
    model = path if isinstance(path, bytes) else str(path)
    options = _options(threads, optimize, model)
    return ort.InferenceSession(model, sess_options=options, providers=providers or ["CPUExecutionProvider"])


def ort_runtime_ops(path: str | Path, threads: int = 0) -> dict[str, int]:
    """Op types (and counts) ONNX Runtime's CPU execution provider runs for the model at ``path``
    after its graph optimizations: e.g. whether Q/DQ MatMuls became integer kernels."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        options = _options(threads, optimize=True, model=path)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return dict(sorted(ops.items()))
