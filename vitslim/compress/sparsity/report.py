"""What reports show of the ``sparsity`` stage, rendered from report.json's dicts alone: the entry it
adds to a sparsified variant and the 2:4 sparsity section (does the pattern survive the export;
the weights' zeros and output errors per layer, for the variant the stage was applied last to)."""

from __future__ import annotations

import math
from typing import Any, TypedDict

from vitslim.report.format import fmt_num, fmt_pct, md_table

__all__ = ["SparsityEntries", "sparsity_section"]


class SparsityEntries(TypedDict, total=False):
    """The report-variant key of the sparsity family."""

    #: every sparsified variant: method, layers sparsified, in how many the 2:4 pattern holds in the
    #: model (``pattern_in_model``) and in the exported ONNX weights (``pattern_in_onnx`` of
    #: ``onnx_layers_found``); the variant it was applied last to also has ``per_layer`` (layer ->
    #: method, shape, sparsity, relative_error, seconds)
    sparsity: dict[str, Any]


def _zeros(per_layer: dict[str, dict]) -> str:
    """The share of zero weights over the sparsified layers (weighted by their sizes)."""
    sizes = {name: math.prod(layer["shape"]) for name, layer in per_layer.items()}
    total = sum(sizes.values())
    return fmt_pct(sum(layer["sparsity"] * sizes[name] for name, layer in per_layer.items()) / total)


def _errors(per_layer: dict[str, dict]) -> str:
    """Mean relative output error and the worst layer's (n/a when measured on no calibration data)."""
    errors = {name: layer["relative_error"] for name, layer in per_layer.items() if layer["relative_error"] is not None}
    if not errors:
        return "n/a"
    worst = max(errors, key=errors.__getitem__)
    return f"{fmt_num(sum(errors.values()) / len(errors))}, worst {worst} {fmt_num(errors[worst])}"


def sparsity_section(variants: list[dict]) -> list[str]:
    """Per sparsified variant: method, whether 2:4 holds in PyTorch and in the ONNX file, zeros and errors."""
    sparse = [v for v in variants if v.get("sparsity")]
    if not sparse:
        return []
    rows = []
    for v in sparse:
        s, per_layer = v["sparsity"], v["sparsity"].get("per_layer")
        rows.append(
            [
                v["name"],
                s["method"],
                str(s["layers"]),
                f"{s['pattern_in_model']} of {s['layers']}",
                f"{s['pattern_in_onnx']} of {s['onnx_layers_found']}",
                _zeros(per_layer) if per_layer else "n/a",
                _errors(per_layer) if per_layer else "n/a",
            ]
        )
    header = [
        "variant",
        "method",
        "sparsified layers",
        "2:4 holds in PyTorch",
        "2:4 holds in ONNX (layers found)",
        "zero weights",
        "relative output error (mean, worst layer)",
    ]
    return [
        "",
        "## 2:4 sparsity",
        "",
        *md_table(header, rows),
        "",
        "Zero weights and errors are recorded for the variant the stage was applied last to, over its sparsified "
        "layers; relative output error: ‖(W_sparse − W) X‖ / ‖W X‖ on each layer's calibration inputs (methods "
        "that read calibration images only).",
    ]
