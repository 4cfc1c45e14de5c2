"""OpenVINO as a deployment runtime: compiling ONNX or IR files, running and timing them, and
reading back what actually ran in int8.

OpenVINO is optional (``pip install 'vitslim[openvino]'``); every entry point raises a
:class:`~vitslim.errors.UserError` naming the extra when it is missing.

Execution precision: on CPUs with AVX-512 BF16 or AMX, OpenVINO runs the float parts of a model
("fp32" models included) in bf16 unless ``INFERENCE_PRECISION_HINT`` says f32. ``precision``
below is ``"default"`` (OpenVINO's choice, what a deployment gets) or ``"f32"``; every result
names the precision that ran (:func:`execution_precision`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitslim.config import check_choice
from vitslim.errors import UserError
from vitslim.models.features import flatten_outputs

from .latency import resolve_threads

__all__ = [
    "PRECISIONS",
    "require_openvino",
    "ov_compile",
    "execution_precision",
    "ov_runner",
    "int8_layers",
]

#: precision hints: OpenVINO's default (bf16 where the CPU has it) or f32
PRECISIONS = ("default", "f32")
#: layer types OpenVINO's CPU plugin runs the model's matrix products in
COMPUTE_LAYERS = ("FullyConnected", "FullyConnectedQuantizedLegacy", "Convolution", "MatMul")
INT8_PRECISIONS = ("i8", "u8")


def require_openvino() -> Any:
    """The ``openvino`` module, or a UserError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UserError(
            "OpenVINO is not installed: pip install 'vitslim[openvino]' (or the openvino package)"
        ) from None
    return openvino


@functools.cache
def _core() -> Any:
    return require_openvino().Core()


def ov_compile(path: str | Path, threads: int = 0, precision: str = "default", batch: int | None = None) -> Any:
    """An OpenVINO CPU ``CompiledModel`` of the ONNX or IR (``.xml``) file at ``path``, for one
    stream of ``threads`` threads (0: all cores) in latency mode. ``batch``: reshape the input
    to that static batch first (what a deployment does); None keeps the file's shapes."""
    check_choice("OpenVINO precision", precision, PRECISIONS)
    core = _core()
    model = core.read_model(str(path))
    if batch is not None:
        shape = model.input(0).get_partial_shape()
        shape[0] = batch
        model.reshape({model.input(0): shape})
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": resolve_threads(threads),
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if precision == "f32":  # the exact run: float math in f32, activations of compressed weights not requantized
        config["INFERENCE_PRECISION_HINT"] = "f32"
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
    return core.compile_model(model, "CPU", config)


def execution_precision(compiled: Any) -> str:
    """The float precision a compiled model runs in (``bf16`` or ``f32``)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def ov_runner(path: str | Path, threads: int = 0, precision: str = "default") -> Callable[[torch.Tensor], torch.Tensor]:
    """Run the model at ``path`` in OpenVINO on batches of images (any batch size); several
    outputs are flattened into one row per image, in the file's order."""
    compiled = ov_compile(path, threads, precision)
    request = compiled.create_infer_request()

    def run(images: torch.Tensor) -> torch.Tensor:
        out = request.infer({0: images.numpy()})
        outs = [torch.from_numpy(np.array(out[port])) for port in compiled.outputs]
        return flatten_outputs(outs[0] if len(outs) == 1 else outs).float()

    return run


def _is_attention(info: dict[str, Any], layer_type: str) -> bool:
    """A fused attention block: OpenVINO names a fused node after the layers it absorbed."""
    return layer_type == "Subgraph" and "softmax" in info["originalLayersNames"].astype(str).lower()


def int8_layers(compiled: Any) -> dict[str, Any]:
    """What ran in int8 in a compiled model: per compute layer type (and ``Attention`` for fused
    attention blocks) how many of them ran with 8-bit integer inputs, read from the runtime
    graph's ``runtimePrecision``; plus the float precision of the rest."""
    counts: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str)
        kind = "Attention" if _is_attention(info, layer_type) else layer_type
        if kind not in COMPUTE_LAYERS and kind != "Attention":
            continue
        precision = info["runtimePrecision"].astype(str).lower()
        counts.setdefault(kind, Counter())["int8" if precision in INT8_PRECISIONS else precision] += 1
    layers = {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}
    return {
        "float_precision": execution_precision(compiled),
        "int8_layers": sum(c.get("int8", 0) for c in counts.values()),
        "compute_layers": sum(sum(c.values()) for c in counts.values()),
        "layers": layers,
    }
