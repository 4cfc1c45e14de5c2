"""Creating inference sessions for the runtimes vitslim measures."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnxruntime as ort


def _options(threads: int, optimize: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
    options = _options(threads, optimize)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=options, providers=providers or ["CPUExecutionProvider"])


def ort_runtime_ops(path: str | Path, threads: int = 0) -> dict[str, int]:
    """Op types (and counts) ONNX Runtime's CPU execution provider runs for the model at ``path``
    after its graph optimizations: e.g. whether Q/DQ MatMuls became integer kernels."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        options = _options(threads, optimize=True)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return dict(sorted(ops.items()))
