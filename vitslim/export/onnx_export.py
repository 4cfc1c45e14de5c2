"""FP32 ONNX export of any image model (its parity with PyTorch: :mod:`vitslim.export.validate`)."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxscript.optimizer
import torch
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from vitslim.errors import UserError
from vitslim.files import atomic_path

from .graph import fuse_transposes

DEFAULT_OPSET = 18


def trace_onnx(
    model: torch.nn.Module,
    input_size: tuple[int, int, int],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> ir.Model:
    """The exporter's ONNX graph of ``model`` (eval mode, CPU), input ``input`` and output
    ``output`` (or the model's ``output_names``: :mod:`vitslim.models.features`), not optimized:
    its initializers are named after ``model.state_dict()`` keys.

    The batch dimension is dynamic unless ``dynamic_batch`` is false. A model the exporter
    cannot trace raises a UserError.
    """
    model = model.eval()
    example = torch.randn(2, *input_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=list(getattr(model, "output_names", ["output"])),
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=False,
            )
    except torch.onnx.OnnxExporterError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{type(model).__name__} cannot be exported to ONNX: {reason}") from exc
    return program.model


def with_weights(graph: ir.Model, model: torch.nn.Module) -> ir.Model:
    """A copy of ``graph`` (a :func:`trace_onnx` graph of a model that differs from ``model`` by
    its weights only) whose initializers hold ``model``'s current parameters and buffers. Raises
    ValueError when an initializer has no ``state_dict`` entry of the same shape and type."""
    state = model.state_dict()
    copy = graph.clone()
    for name, value in copy.graph.initializers.items():
        tensor = state.get(name)
        new = None if tensor is None else ir.tensor(tensor.detach().cpu().numpy(), name=name)
        if new is None or new.shape != value.shape or new.dtype != value.dtype:
            raise ValueError(f"initializer {name!r}: no state_dict entry of shape {value.shape}, type {value.dtype}")
        value.const_value = new
    return copy


def save_onnx(graph: ir.Model, path: str | Path, *, optimize: bool = True) -> Path:
    """Write ``graph`` to ``path``, checked by ``onnx.checker``. ``optimize``: a copy is written
    after :func:`light_optimize` and :func:`~vitslim.export.graph.fuse_transposes` (``graph``
    itself is left as it is). The file is written to a
    temporary name in the same folder and renamed, so a failure leaves nothing behind."""
    if optimize:
        graph = graph.clone()
        light_optimize(graph)
    proto = ir.serde.serialize_model(graph)
    if optimize:
        fuse_transposes(proto.graph)
    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp)
    return Path(path)


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    optimize: bool = True,
) -> Path:
    """Export ``model`` to ``path``: :func:`trace_onnx` then :func:`save_onnx`.

    ``optimize`` folds constants (the shape arithmetic of a dynamic batch included), removes
    unused nodes and stores constants as initializers (:func:`light_optimize`); ONNX Runtime
    does its own fusions at load. A failed export leaves nothing behind.
    """
    return save_onnx(trace_onnx(model, input_size, opset=opset, dynamic_batch=dynamic_batch), path, optimize=optimize)


def light_optimize(model: ir.Model) -> None:
    """Constant folding, unused-node removal and constants lifted to initializers, in place.

    The exporter's own optimizer adds pattern rewrites (no-op and slice eliminations) whose
    matching takes most of its time: 15-22 s on a token-merging ViT's ~4000 nodes against 0.5 s
    for these passes, with the same ONNX Runtime outputs and latency (ORT fuses at load)."""
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
