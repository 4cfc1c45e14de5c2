"""Creating inference sessions for the runtimes vitslim measures."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def ort_session(
    path: str | Path | bytes, threads: int = 0, providers: list | None = None, optimize: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``path`` (a file or serialized model); ``threads`` = 0: ORT picks;
    ``providers``: execution providers (names or ``(name, options)``), default the CPU one.
    ``optimize=False`` turns ORT's graph optimizations off: Q/DQ pairs then run as written (float
    emulation) instead of being fused into integer kernels."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=options, providers=providers or ["CPUExecutionProvider"])
