"""Exporting one variant of a run: explicit Q/DQ ONNX when it is quantized, plain FP32 otherwise,
reusing a traced graph where only weights differ."""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch

from vitslim.compress.quant import is_quantized
from vitslim.evaluate.device import module_device
from vitslim.export.manifest import precision_table
from vitslim.export.onnx_export import DEFAULT_OPSET, save_onnx, trace_onnx, with_weights
from vitslim.export.qdq import export_quantized_onnx

__all__ = ["export_variant", "graph_signature"]

log = logging.getLogger(__name__)


def export_variant(
    model: torch.nn.Module,
    path: Path,
    input_size: tuple[int, int, int],
    graphs: dict[str, ir.Model] | None = None,
    name: str = "",
    reuse: str | None = None,
) -> tuple[Path, int, dict]:
    """Export ``model`` to ``path``: explicit Q/DQ when it is quantized, plain FP32 otherwise.
    Returns the path, the opset and what the export says about itself. A model on a GPU is
    exported from a CPU copy. ``graphs``: the traced graphs of float exports, by variant name;
    this one's is kept under ``name``. ``reuse``: a variant in ``graphs`` that differs from this
    one by its weights only: its graph is written with this model's weights instead of tracing
    again (tracing a ViT with token merging takes 25-60 s)."""
    if module_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()
    if not is_quantized(model):
        info: dict[str, Any] = {"format": "fp32"}
        graph = None
        if graphs is not None and reuse in graphs:
            try:
                graph = with_weights(graphs[reuse], model)
                info["graph_of"] = reuse
            except ValueError as exc:
                log.info("%s: traced again, the graph of %s does not fit (%s)", name, reuse, exc)
        if graph is None:
            graph = trace_onnx(model, input_size, opset=DEFAULT_OPSET)
        if graphs is not None:
            graphs[name] = graph
        return save_onnx(graph, path), DEFAULT_OPSET, info
    export = export_quantized_onnx(model, path, input_size)
    info = {
        "format": "qdq",
        "accelerated_sites": len(export.accelerated),
        "emulated_sites": len(export.emulated),
        "tensorrt_int8_ready": export.tensorrt_int8_ready,
        "tensorrt": export.tensorrt.to_dict(),
        "notes": export.notes,
        "precision": precision_table(export),
    }
    return export.path, export.opset, info


def graph_signature(path: str | Path) -> str:
    """A sha256 of the ONNX file's graph without its weight values (ops, attributes, wiring, tensor
    names, shapes and types): two files with equal signatures compute the same way, at the same
    cost, with other weights at most."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
        tensor.ClearField("external_data")
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()
