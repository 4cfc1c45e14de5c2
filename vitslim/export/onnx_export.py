"""FP32 ONNX export of any image model (its parity with PyTorch: :mod:`vitslim.export.validate`)."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from copy import copy as shallow_copy
from pathlib import Path
from typing import Any

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
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), reused_torchlib_registry():
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


#: The exporter's torchlib registries built so far, per ``from_torchlib`` arguments (opset): a
#: memo of a pure function of the installed torch/onnxscript, see :func:`reused_torchlib_registry`.
_TORCHLIB_REGISTRIES: dict[Any, Any] = {}
_REGISTRY_LOCK = threading.Lock()
_REGISTRY_USERS = 0
_ORIGINAL_FROM_TORCHLIB: Any = None


def _registry_class() -> Any:
    """torch's ``ONNXRegistry`` class when it has the ``from_torchlib`` classmethod and the
    ``functions`` table this module knows how to copy, else None (another torch version)."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        return None
    method = ONNXRegistry.__dict__.get("from_torchlib")
    if not isinstance(method, classmethod) or not isinstance(getattr(ONNXRegistry(), "functions", None), dict):
        return None
    return ONNXRegistry


@contextlib.contextmanager
def reused_torchlib_registry() -> Iterator[None]:
    """While open, ``torch.onnx.export(..., dynamo=True)`` reuses one registry of ONNX
    decompositions per opset instead of rebuilding it from torchlib on every call.

    torch 2.14's public ``export`` has no registry argument: it calls the private
    ``ONNXRegistry.from_torchlib(opset_version=...)`` (0.4-0.9 s, about a sixth of a tiny ViT's
    export) each time. That result depends only on the installed torch and onnxscript, so the
    classmethod is replaced, for the duration of the block, by one that builds it once and hands
    out copies (the export only reads the registry; the copy keeps even a registration, such as
    a ``custom_translation_table``, out of the memo). Where the class or method is not what this
    expects, the block changes nothing and the export takes its normal path.
    """
    global _REGISTRY_USERS, _ORIGINAL_FROM_TORCHLIB
    registry_class = _registry_class()
    if registry_class is None:
        yield
        return
    with _REGISTRY_LOCK:
        if _REGISTRY_USERS == 0:
            _ORIGINAL_FROM_TORCHLIB = registry_class.__dict__["from_torchlib"]
            registry_class.from_torchlib = classmethod(_memoised_from_torchlib)
        _REGISTRY_USERS += 1
    try:
        yield
    finally:
        with _REGISTRY_LOCK:
            _REGISTRY_USERS -= 1
            if _REGISTRY_USERS == 0:
                registry_class.from_torchlib = _ORIGINAL_FROM_TORCHLIB
                _ORIGINAL_FROM_TORCHLIB = None


def _memoised_from_torchlib(cls: type, *args: Any, **kwargs: Any) -> Any:
    """A copy of ``cls.from_torchlib(*args, **kwargs)``, built once (the original is the one
    :func:`reused_torchlib_registry` replaced)."""
    key = (cls, args, tuple(sorted(kwargs.items())))
    registry = _TORCHLIB_REGISTRIES.get(key)
    if registry is None:
        registry = _TORCHLIB_REGISTRIES[key] = _ORIGINAL_FROM_TORCHLIB.__func__(cls, *args, **kwargs)
    registry = shallow_copy(registry)
    registry.functions = {target: list(decomps) for target, decomps in registry.functions.items()}
    return registry


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
