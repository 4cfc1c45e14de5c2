"""The ``sparsity`` stage of a recipe: 2:4 sparsity, and whether the pattern survives the export
(shown by :mod:`.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vitslim.stages import Calibration, Family, StageRecord

from .apply import sparsify_
from .check import check_24, onnx_24_report
from .config import SparsityConfig
from .report import SparsityEntries, sparsity_section
from .selection import select_layers

__all__ = ["STAGE", "apply", "calibrates", "check", "pattern_check", "sparsity_notes"]


def apply(model: nn.Module, config: SparsityConfig, calibration: Calibration) -> StageRecord:
    """Make ``model``'s selected Linear weights 2:4 sparse in place (calibrated when the method needs data)."""
    data = calibration.calibration(config.images) if config.needs_data else None
    record = sparsify_(model, config, data, progress=calibration.progress, seed=calibration.seed)
    images = f", {record['images']} calibration images" if config.needs_data else ""
    return StageRecord(f"{config.describe()} on {len(record['layers'])} layers{images}", config, record)


def pattern_check(record: StageRecord, model: nn.Module, onnx_path: Path, own: bool) -> dict[str, Any]:
    """``sparsity``: whether the sparsified layers still hold 2:4 in ``model`` and in its exported
    ONNX weights (with the per-layer record when the stage was applied last)."""
    layers = list(record.report["layers"])
    in_model = check_24(model, layers)
    exported = onnx_24_report(onnx_path)["weights"]
    in_onnx = {name: exported[name]["pattern_24"] for name in layers if name in exported}
    check = {
        "method": record.config.method,
        "layers": len(layers),
        "pattern_in_model": sum(in_model.values()),
        "pattern_in_onnx": sum(in_onnx.values()),
        "onnx_layers_found": len(in_onnx),
    }
    if own:
        check["per_layer"] = record.report["layers"]
    return {"sparsity": check}


def sparsity_notes(variants: list[dict]) -> list[str]:
    """Per sparsified variant: in how many layers the 2:4 pattern holds, in PyTorch and in the ONNX file."""
    return [
        f"{v['name']}: 2:4 pattern ({v['sparsity']['method']}) holds in {v['sparsity']['pattern_in_model']} of "
        f"{v['sparsity']['layers']} sparsified layers in PyTorch and in {v['sparsity']['pattern_in_onnx']} of "
        f"{v['sparsity']['onnx_layers_found']} found in {v['onnx']['file']}."
        for v in variants
        if v.get("sparsity")
    ]


def calibrates(config: SparsityConfig) -> bool:
    """Whether the method reads calibration images (wanda, sparsegpt)."""
    return config.needs_data


def check(model: nn.Module, config: SparsityConfig) -> None:
    """Resolve the layer patterns: a UserError when a selected layer cannot hold 2:4 (or none is selected)."""
    select_layers(model, config)


STAGE = Family(
    from_dict=SparsityConfig.from_dict,
    apply=apply,
    calibrates=calibrates,
    check=check,
    summarize=pattern_check,
    notes=sparsity_notes,
    entries=SparsityEntries,
    sections=sparsity_section,
)
