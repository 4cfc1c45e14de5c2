"""Checking the 2:4 pattern: on a model or state dict, and on the weights of an exported ONNX file."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from torch import Tensor, nn

from vitslim.errors import UserError

from .pattern import holds_24
from .selection import matches

__all__ = ["check_24", "onnx_24_report"]


def check_24(
    model_or_state_dict: nn.Module | Mapping[str, Tensor], patterns: list[str] | None = None
) -> dict[str, bool]:
    """Whether each Linear weight holds the 2:4 pattern along its input dimension, by layer name.

    A model: its ``nn.Linear`` layers; a state dict: its 2-D ``<layer>.weight`` tensors.
    ``patterns``: fnmatch patterns of layer names to check (default: all)."""
    if isinstance(model_or_state_dict, nn.Module):
        weights = {n: m.weight for n, m in model_or_state_dict.named_modules() if isinstance(m, nn.Linear)}
    else:
        weights = {
            k[: -len(".weight")]: v
            for k, v in model_or_state_dict.items()
            if k.endswith(".weight") and isinstance(v, Tensor) and v.dim() == 2
        }
    return {n: holds_24(w) for n, w in weights.items() if patterns is None or matches(n, patterns)}


# ----------------------------------------------------------------------------- ONNX

#: Ops a weight may pass through between its initializer and the MatMul/Gemm keeping its zeros
#: (a quantized weight's zeros are its zero point).
_PASS_THROUGH = ("Identity", "Cast", "DequantizeLinear")


def _reduction_axes(node: onnx.NodeProto) -> dict[int, int]:
    """Reduction axis of each constant-capable input of a MatMul (``A @ B``) or Gemm node."""
    if node.op_type == "MatMul":
        return {0: -1, 1: -2}
    attrs = {a.name: a.i for a in node.attribute}
    return {0: 0 if attrs.get("transA", 0) else 1, 1: 1 if attrs.get("transB", 0) else 0}


def _layer_name(node: onnx.NodeProto) -> str | None:
    """The PyTorch module a node came from, from the exporter's name-scope metadata."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if isinstance(scopes, list) and len(scopes) >= 2 else None
    return None


def _chain(
    name: str, producers: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray]
) -> tuple[str, list[onnx.NodeProto]] | None:
    """The constant behind ``name`` and the Transpose/pass-through nodes from it to ``name``
    (constant side first); None when ``name`` is not computed from a constant alone."""
    chain: list[onnx.NodeProto] = []
    while name not in constants:
        node = producers.get(name)
        if node is None or node.op_type not in ("Transpose", *_PASS_THROUGH):
            return None
        chain.append(node)
        name = node.input[0]
    return name, chain[::-1]


def _nonzero_as_consumed(
    array: np.ndarray, chain: list[onnx.NodeProto], constants: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[int]] | None:
    """Non-zero indicator of ``array`` after ``chain``, and for each of its axes the stored axis
    it came from. A quantized weight is zero where it equals its zero point."""
    nonzero, order = array != 0, list(range(array.ndim))
    for node in chain:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Transpose":
            perm = list(attrs["perm"].ints) if "perm" in attrs else list(range(nonzero.ndim))[::-1]
            nonzero, order = nonzero.transpose(perm), [order[p] for p in perm]
        elif node.op_type == "DequantizeLinear" and len(node.input) > 2 and node.input[2]:
            if node.input[2] not in constants:
                return None
            zero_point, shape = constants[node.input[2]], [1] * nonzero.ndim
            if zero_point.ndim:
                shape[(attrs["axis"].i if "axis" in attrs else 1) % nonzero.ndim] = -1
            nonzero = array.transpose(order) != zero_point.reshape(shape)
    return nonzero, order


def onnx_24_report(onnx_path: str | Path) -> dict[str, Any]:
    """Which MatMul/Gemm weight initializers of an ONNX file hold the 2:4 pattern along their
    reduction axis.

    A weight may reach its node directly, transposed (the exporter stores ``nn.Linear`` weights
    as ``Wᵀ`` feeding ``MatMul``; ``Gemm`` has ``transB``), or through Identity/Cast/
    DequantizeLinear (a zero of a quantized weight is its zero point); the reduction axis is
    traced back to the stored array. Returns ``weights``: per weight (keyed by the PyTorch layer
    from the exporter's metadata when present, else the initializer name) the initializer, node,
    op, shape, reduction axis, ``pattern_24`` and ``sparsity``; and the counts ``total`` and
    ``with_pattern``."""
    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    graph = onnx.load(str(path)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value.t)
    producers = {out: node for node in graph.node for out in node.output}
    weights: dict[str, dict[str, Any]] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        for index, axis in _reduction_axes(node).items():
            found = _chain(node.input[index], producers, constants) if index < len(node.input) else None
            if found is None or constants[found[0]].ndim < 2:
                continue
            name, chain = found
            consumed = _nonzero_as_consumed(constants[name], chain, constants)
            if consumed is None:
                continue
            nonzero, order = consumed
            weights[_layer_name(node) or name] = {
                "initializer": name,
                "node": node.name,
                "op": node.op_type,
                "shape": list(constants[name].shape),
                "reduction_axis": order[axis % nonzero.ndim],
                "pattern_24": holds_24(nonzero, axis),
                "sparsity": 1.0 - float(nonzero.mean()),
            }
    return {"weights": weights, "total": len(weights), "with_pattern": sum(w["pattern_24"] for w in weights.values())}
