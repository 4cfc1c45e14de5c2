"""The ``validate`` stage's verdict on a measured variant: its ONNX file (and each prepared runtime
artifact) against its PyTorch model, with the noise floor when needed, and for a failed quantized
file whether the graph or this CPU's int8 kernels deviate."""

from __future__ import annotations

import logging

import torch

from vitslim.evaluate.accuracy import Outputs
from vitslim.evaluate.environment import int8_saturates
from vitslim.evaluate.parity import noise_floor, reference_parity
from vitslim.export.validate import ValidateStage, validate_exports
from vitslim.pipeline.measure import MeasureSettings
from vitslim.runtimes import RUNTIMES

__all__ = ["validate_variant"]

log = logging.getLogger(__name__)


def validate_variant(
    variant: dict, model: torch.nn.Module, outputs: Outputs, settings: MeasureSettings, rule: ValidateStage
) -> list[str]:
    """Judge a variant's ONNX parity (ONNX Runtime) and that of every artifact a runtime prepared
    for it (:meth:`~vitslim.runtimes.base.Runtime.judged`, e.g. OpenVINO's IR with the f32 hint) by
    ``rule`` (:func:`~vitslim.export.validate.validate_exports`: failing files are quarantined).
    Returns why each file failed (empty when all passed)."""
    exports = {"onnx": (variant["onnx"], variant["onnx"])}
    for name in settings.runtimes:
        judged = RUNTIMES[name].judged(variant[name]) if name in variant else None
        if judged is not None:
            exports[name] = (variant[name], judged)

    def floor() -> dict:
        measured = noise_floor(model, settings.data, outputs, settings.threads, settings.progress)
        log.info("%s: PyTorch noise floor, agreement with itself %.2f%%", variant["name"], 100 * measured["agreement"])
        return measured

    failures = validate_exports(variant["name"], exports, rule, floor, settings.out_dir)
    if "onnx" in failures and variant["onnx"].get("format") == "qdq":
        failures["onnx"] = _with_kernel_diagnosis(failures["onnx"], variant["onnx"], settings, outputs, rule)
    return list(failures.values())


def _with_kernel_diagnosis(
    failure: str, onnx: dict, settings: MeasureSettings, outputs: Outputs, rule: ValidateStage
) -> str:
    """A failed quantized ONNX file run again with ONNX Runtime's reference kernels, recorded in its
    ``validation``: when those pass, the graph is right and this CPU's int8 kernels deviate."""
    classifier = onnx["top1_agreement"] is not None
    path = settings.out_dir / onnx["file"]
    reference = reference_parity(path, settings.data, outputs, settings.threads, classifier, settings.progress)
    exact = not rule.failures({**reference, "samples": onnx["samples"]})
    onnx["validation"]["reference_kernels"] = {**reference, "passed": exact}
    if not exact:
        return failure
    saturates = (
        "; this CPU has no VNNI: its int8 kernels saturate, which 'reduce_range' avoids" if int8_saturates() else ""
    )
    return (
        f"{failure}; with ONNX Runtime's reference kernels the file matches PyTorch (max abs diff "
        f"{reference['max_abs_diff']:.3g}): the deviation comes from this CPU's int8 kernels{saturates}"
    )
