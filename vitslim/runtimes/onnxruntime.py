"""ONNX Runtime: the variant's ONNX file itself (its CPU provider, or CUDA's where PyTorch runs on a GPU)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Deployed, Runtime, Timed

if TYPE_CHECKING:
    from vitslim.evaluate.accuracy import Outputs
    from vitslim.evaluate.data import EvalData

__all__ = ["OnnxRuntime"]


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    title = "ONNX Runtime"
    deploy_rank = 20

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        import numpy as np

        from vitslim.evaluate.device import ort_providers
        from vitslim.evaluate.runtimes import ort_session

        session = ort_session(deployed.onnx, threads=threads, providers=ort_providers(deployed.device))
        x = np.random.default_rng(0).standard_normal((batch, *deployed.input_size), dtype=np.float32)
        call = functools.partial(session.run, None, {session.get_inputs()[0].name: x})
        return {"": Timed(call, session.get_providers()[0])}

    def evaluate_file(self, path: Path, data: EvalData, threads: int, progress: bool) -> tuple[str, Outputs]:
        from vitslim.evaluate.data import evaluate_onnx

        return f"onnxruntime:{path.name}", evaluate_onnx(path, data, threads, progress)

    def ran_in(self, variant: dict[str, Any], device: str) -> str:
        onnx = variant.get("onnx") or {}
        ran = _qdq_label(onnx) if onnx.get("format") == "qdq" else "fp32"
        return f"ONNX Runtime {device.removesuffix('ExecutionProvider')}, {ran}"


def _qdq_label(onnx: dict[str, Any]) -> str:
    """``int8 Q/DQ``, ``int4/int8 Q/DQ`` ... by the weights' stored types; fp8 says it runs dequantized."""
    types = {row["onnx_type"] for row in (onnx.get("precision") or {}).values() if row["kind"] == "weight"}
    if "float8e4m3fn" in types:
        return "fp8 Q/DQ, dequantized to float (no FP8 kernels on a CPU)"
    return f"{'/'.join(sorted(t for t in types if t in ('int4', 'int8', 'uint8'))) or 'int8'} Q/DQ"
