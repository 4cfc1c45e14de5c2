"""Measuring one variant of a run: its PyTorch scores, its export checked in ONNX Runtime, and the
artifact of every other measured runtime prepared and checked (latency is timed later, for all
variants together: :mod:`vitslim.runtimes.timing`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch

from vitslim.evaluate.accuracy import Outputs, score
from vitslim.evaluate.data import EvalData, evaluate_onnx, evaluate_torch
from vitslim.evaluate.device import describe_device, ort_providers
from vitslim.evaluate.environment import environment
from vitslim.evaluate.features import feature_fidelity
from vitslim.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP, resolve_threads
from vitslim.evaluate.parity import onnx_parity
from vitslim.export.variant import export_variant, graph_signature
from vitslim.models import LoadedModel
from vitslim.models.features import split_outputs, with_output
from vitslim.runtimes import RUNTIMES, Check, Deployed

__all__ = ["MeasureSettings", "Measured", "measure_variant", "model_summary", "report_header"]

log = logging.getLogger(__name__)


def _scores_text(scores: dict) -> str:
    top1 = "" if scores["top1"] is None else f"top-1 {100 * scores['top1']:.2f}%, "
    if scores["agreement"] is None:  # a headless backbone: features, compared by cosine
        return f"{top1}cosine with fp32 {scores['cosine']:.4f}"
    return f"{top1}agreement with fp32 {100 * scores['agreement']:.2f}%"


def model_summary(loaded: LoadedModel) -> dict:
    return {
        "name": loaded.name,
        "source": loaded.source,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "input_size": list(loaded.input_size),
        "num_classes": loaded.num_classes,
    }


@dataclass
class MeasureSettings:
    """Where and how every variant of one run is measured."""

    data: EvalData
    out_dir: Path
    threads: int
    batch_sizes: list[int]
    progress: bool = True
    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS
    #: where PyTorch runs (the models are moved there by the caller); ONNX Runtime follows it
    #: with its CUDA provider when that is installed
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: runtimes whose latency is measured ("pytorch", "onnxruntime", "openvino"); with
    #: "openvino" each variant is also converted to OpenVINO IR and evaluated in it
    runtimes: tuple[str, ...] = ("pytorch", "onnxruntime")
    #: what the models output and are exported with: ``logits`` (their own output), ``pooled``,
    #: ``patch`` or ``both`` (:mod:`vitslim.models.features`)
    output: str = "logits"

    @property
    def providers(self) -> list:
        return ort_providers(self.device)

    def describe(self) -> dict:
        return {
            "device": describe_device(self.device),
            "onnxruntime_providers": [p if isinstance(p, str) else p[0] for p in self.providers],
            "threads": resolve_threads(self.threads),
            "batch_sizes": self.batch_sizes,
            "inputs": "random normal",
            "warmup": self.warmup,
            "runs": self.runs,
            "timing": "interleaved",
            "runtimes": list(self.runtimes),
            "output": self.output,
        }

    def classifier(self, loaded: LoadedModel) -> bool:
        """Whether outputs are compared as logits (a classifier's own output), not as features."""
        return loaded.num_classes > 0 and self.output == "logits"


@dataclass
class Measured:
    """A measured variant: its report entry (latency still to come), its PyTorch outputs (what the
    run's ``output`` is) and what the runtimes time (:mod:`vitslim.runtimes.timing`)."""

    variant: dict[str, Any]
    outputs: Outputs
    deployed: Deployed


def measure_variant(
    name: str,
    description: str,
    model: torch.nn.Module,
    loaded: LoadedModel,
    settings: MeasureSettings,
    reference: Outputs | None = None,
    graphs: dict[str, ir.Model] | None = None,
    reuse: str | None = None,
) -> Measured:
    """Evaluate ``model`` in PyTorch (fidelity against ``reference``, itself when None), export it
    to ``<out_dir>/model_<name>.onnx`` (``graphs`` and ``reuse``: :func:`~vitslim.export.variant.export_variant`),
    check the export on the same data in ONNX Runtime and prepare and check the artifact of every
    other measured runtime (e.g. OpenVINO IR)."""
    classifier = settings.classifier(loaded)
    model = with_output(model, settings.output, loaded.num_classes > 0)
    start = time.perf_counter()
    outputs = evaluate_torch(model, settings.data, settings.threads, settings.progress)
    scores = score(outputs, reference, classifier)
    if settings.output != "logits":
        scores.update(_feature_scores(model.layout(loaded.input_size), outputs, reference))
    log.info("%s: PyTorch %s (%.1f s)", name, _scores_text(scores), time.perf_counter() - start)
    onnx_path, onnx_record = _export_checked(name, model, loaded, settings, outputs, graphs, reuse)
    deployed = Deployed(name, model, onnx_path, loaded.input_size, settings.device, baseline=reference is None)
    check = Check(settings.data.batches, outputs, reference, classifier, settings.threads, settings.progress)
    prepared = {}
    for runtime in settings.runtimes:
        start = time.perf_counter()
        record = RUNTIMES[runtime].prepare(deployed, check)
        if record is not None:
            prepared[runtime] = record
            log.info("%s: %s prepared and checked (%.1f s)", name, RUNTIMES[runtime].title, time.perf_counter() - start)
    variant = {
        "name": name,
        "description": description,
        "evaluated_with": "pytorch",
        **scores,
        "size_bytes": onnx_path.stat().st_size,
        "onnx": onnx_record,
        **prepared,
        "latency": [],
    }
    return Measured(variant, outputs, deployed)


def _feature_scores(layout: list[tuple[str, tuple[int, ...]]], outputs: Outputs, reference: Outputs | None) -> dict:
    """The variant's ``outputs`` (name: per-image shape) and ``features`` fidelity record."""
    parts = split_outputs(outputs.logits, layout)
    ref = parts if reference is None else split_outputs(reference.logits, layout)
    shapes = {name: list(shape) for name, shape in layout}
    return {"outputs": shapes, "features": feature_fidelity(ref, parts, outputs.labels)}


def _agreement_text(agreement: float | None) -> str:
    return "n/a (headless)" if agreement is None else f"{100 * agreement:.2f}%"


def _export_checked(
    name: str,
    model: torch.nn.Module,
    loaded: LoadedModel,
    settings: MeasureSettings,
    outputs: Outputs,
    graphs: dict[str, ir.Model] | None,
    reuse: str | None,
) -> tuple[Path, dict]:
    """Export ``model`` and evaluate the file in ONNX Runtime: its path and the variant's ``onnx`` record."""
    start = time.perf_counter()
    path = settings.out_dir / f"model_{name}.onnx"
    onnx_path, opset, export_info = export_variant(model, path, loaded.input_size, graphs, name, reuse)
    size_mb = onnx_path.stat().st_size / 1e6
    log.info("%s: exported %s, %.1f MB (%.1f s)", name, onnx_path.name, size_mb, time.perf_counter() - start)
    onnx_outputs = evaluate_onnx(onnx_path, settings.data, settings.threads, settings.progress, settings.providers)
    parity = onnx_parity(outputs, onnx_outputs, onnx_path, opset, settings.classifier(loaded))
    log.info(
        "%s: ONNX Runtime vs PyTorch: agreement %s, max abs diff %.3g",
        name,
        _agreement_text(parity["top1_agreement"]),
        parity["max_abs_diff"],
    )
    return onnx_path, {**parity, **export_info, "graph_sha256": graph_signature(onnx_path)}


def report_header(loaded: LoadedModel, settings: MeasureSettings) -> dict:
    """The header parts of a report (:func:`~vitslim.report.schema.build_report`): the model, the
    data, the machine and how latency was measured."""
    return {
        "model": model_summary(loaded),
        "data": settings.data.describe(),
        "environment": environment(),
        "benchmark": settings.describe(),
    }
