"""The report.json contract as types: what a run's report holds, built and checked here only.

A report has a header (what was measured, with which data, where and how), its variants (the
uncompressed model ``fp32`` first) and, for a compress run, the recipe, notes, validation
failures, the TensorRT engine and the deployment target. The required keys are those of the
``_Required*`` bases: reports written by older versions, which lack later keys, still read. A
variant also holds what its stage families add (tokens per layer, quantization, sparsity, ...):
each family declares those keys itself (:attr:`vitslim.stages.Family.entries`).
"""

from __future__ import annotations

import datetime
from typing import Any, TypedDict

import vitslim

__all__ = ["Latency", "Variant", "Report", "build_report", "validate_report"]


class _RequiredLatency(TypedDict):
    runtime: str
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    images_per_s: float


class Latency(_RequiredLatency, total=False):
    """One runtime at one batch size: warm-up, then the median and spread of the timed calls; timed
    interleaved with the run's other variants and runtimes, its p50 in each round (the rounds pair
    up across entries: :mod:`vitslim.evaluate.speedup`)."""

    device: str
    warmup: int
    runs: int
    p10_ms: float
    p99_ms: float
    mean_ms: float
    round_p50_ms: list[float]


class _RequiredVariant(TypedDict):
    name: str
    top1: float | None
    top5: float | None
    agreement: float | None
    size_bytes: int
    latency: list[Latency]


class Variant(_RequiredVariant, total=False):
    """A measured model: accuracy and fidelity against fp32 in PyTorch, its ONNX export (parity,
    format, validation), its OpenVINO IR when measured and latency; plus the keys of the stage
    families (what its stages did, declared by each :class:`~vitslim.stages.Family`'s ``entries``)."""

    description: str
    evaluated_with: str
    cosine: float
    kl: float | None
    onnx: dict[str, Any]
    openvino: dict[str, Any]
    #: with ``--output pooled|patch|both``: each output's per-image shape, and feature fidelity vs fp32
    outputs: dict[str, list[int]]
    features: dict[str, float | None]


class _RequiredReport(TypedDict):
    model: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    variants: list[Variant]


class Report(_RequiredReport, total=False):
    """A run: header, variants and (compress runs) what the recipe did beyond them."""

    vitslim_version: str
    created: str
    command: str
    benchmark: dict[str, Any]
    recipe: dict[str, Any]
    notes: list[str]
    validation_failures: list[str]
    tensorrt: dict[str, Any]
    target: dict[str, Any]


def _required(schema: type) -> list[str]:
    return [key for key in schema.__annotations__ if key in schema.__required_keys__]


def build_report(
    *,
    model: dict[str, Any],
    data: dict[str, Any],
    environment: dict[str, Any],
    benchmark: dict[str, Any],
    variants: list[Variant],
    command: str = "",
    recipe: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    validation_failures: list[str] | None = None,
    tensorrt: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
) -> Report:
    """A checked report (:func:`validate_report`), stamped with this version and the time;
    the optional parts are left out when None."""
    report: Report = {
        "vitslim_version": vitslim.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "model": model,
        "data": data,
        "environment": environment,
        "benchmark": benchmark,
        "variants": variants,
    }
    optional = {
        "recipe": recipe,
        "notes": notes,
        "validation_failures": validation_failures,
        "tensorrt": tensorrt,
        "target": target,
    }
    report.update({key: value for key, value in optional.items() if value is not None})  # type: ignore[typeddict-item]
    validate_report(report)
    return report


def validate_report(report: dict) -> None:
    """Raise ValueError unless ``report`` follows the report.json contract."""
    missing = [k for k in _required(Report) if k not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")
    if not report["variants"] or report["variants"][0]["name"] != "fp32":
        raise ValueError("the first variant must be the uncompressed model named 'fp32'")
    for variant in report["variants"]:
        lacking = [k for k in _required(Variant) if k not in variant]
        lacking += [f"latency.{k}" for entry in variant["latency"] for k in _required(Latency) if k not in entry]
        if lacking:
            raise ValueError(f"variant {variant.get('name')} lacks {lacking}")
