"""The ten-second summary that opens a report: per variant, what it costs and what it gains.

One row per variant: top-1 and its change against fp32, the speed-up against fp32 in the runtime a
deployment would use (OpenVINO when it was measured, else ONNX Runtime, else PyTorch: same
runtime, device, precision, batch and threads), the file size, the export's validation verdict
and which runtime and precision ran it.
"""

from __future__ import annotations

from typing import Any

from vitslim.report.features import feature_summary
from vitslim.report.format import fmt_mb, fmt_pct, md_table

__all__ = ["DEPLOYMENT_RUNTIMES", "summary_rows", "summary_section"]

#: runtimes a summary reports speed-ups in, the first one measured wins
DEPLOYMENT_RUNTIMES = ("openvino", "onnxruntime", "pytorch")
_RUNTIME_NAMES = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime", "pytorch": "PyTorch"}


def _runtime(variants: list[dict]) -> str | None:
    """The first of :data:`DEPLOYMENT_RUNTIMES` every variant was timed in."""
    timed = [{entry["runtime"] for entry in v["latency"]} for v in variants]
    return next((r for r in DEPLOYMENT_RUNTIMES if all(r in t for t in timed)), None)


def _accuracy(variant: dict, fp32: dict) -> str:
    features = feature_summary(variant)
    if features is not None and variant["top1"] is None:
        return features
    if variant["top1"] is None and variant["agreement"] is None:  # a headless model's output: features
        return f"cosine {variant['cosine']:.4f}"
    if variant["top1"] is None:
        return f"agreement {fmt_pct(variant['agreement'])}"
    if variant is fp32 or fp32["top1"] is None:
        return fmt_pct(variant["top1"])
    return f"{fmt_pct(variant['top1'])} ({100 * (variant['top1'] - fp32['top1']):+.2f} pt)"


def _setting(entry: dict) -> tuple:
    return entry.get("device", "cpu"), entry["batch"], entry["threads"]


def _speedup(variant: dict, fp32: dict, runtime: str, settings: set[tuple]) -> str:
    """fp32's p50 over the variant's per batch size, in ``runtime`` at the same device (precision) and
    threads, for the ``settings`` every variant was timed at (fp32's extra f32-hint runs are left out)."""
    base = {_setting(e): e["p50_ms"] for e in fp32["latency"] if e["runtime"] == runtime}
    parts = []
    for entry in variant["latency"]:
        key = _setting(entry)
        if entry["runtime"] == runtime and key in base and key in settings:
            parts.append(f"{base[key] / entry['p50_ms']:.2f}x (b{entry['batch']})")
    return ", ".join(parts) or "n/a"


def _verdict(variant: dict) -> str:
    checks = {
        "ONNX": (variant.get("onnx") or {}).get("validation"),
        "OpenVINO IR": (variant.get("openvino") or {}).get("validation"),
    }
    judged = {name: check for name, check in checks.items() if check}
    if not judged:
        return "n/a"
    failed = [name for name, check in judged.items() if not check["passed"]]
    return f"FAILED ({', '.join(failed)})" if failed else "passed"


def _precision(variant: dict, runtime: str) -> str:
    """Which runtime ran the variant, on what, in which precision."""
    device = next((e.get("device", "cpu") for e in variant["latency"] if e["runtime"] == runtime), "cpu")
    device = device.removesuffix("ExecutionProvider")  # ONNX Runtime's CPUExecutionProvider: CPU
    if runtime == "openvino":
        ov = variant["openvino"]
        int8 = ov["int8"]
        layers = f", int8 in {int8['int8_layers']} of {int8['compute_layers']} layers" if int8["int8_layers"] else ""
        return f"OpenVINO {device}{layers}"
    quantized = (variant.get("onnx") or {}).get("format") == "qdq"
    if runtime == "onnxruntime":
        return f"ONNX Runtime {device}, {'int8 Q/DQ' if quantized else 'fp32'}"
    return f"PyTorch {device}, {'fake-quantized' if quantized else 'fp32'}"


def summary_rows(report: dict[str, Any]) -> tuple[str | None, list[list[str]]]:
    """The deployment runtime the speed-ups are taken in, and a table row per variant."""
    variants = report["variants"]
    fp32, runtime = variants[0], _runtime(variants)
    settings = {_setting(e) for e in variants[-1]["latency"] if e["runtime"] == runtime}
    rows = []
    for v in variants:
        size = fmt_mb(v["size_bytes"])
        if v is not fp32 and v["size_bytes"] and fp32["size_bytes"]:
            size += f" ({v['size_bytes'] / fp32['size_bytes']:.2f}x)"
        speed = "n/a" if runtime is None else _speedup(v, fp32, runtime, settings)
        ran = "n/a" if runtime is None else _precision(v, runtime)
        rows.append([v["name"], _accuracy(v, fp32), speed, size, _verdict(v), ran])
    return runtime, rows


def summary_section(report: dict[str, Any]) -> list[str]:
    """The summary's Markdown lines."""
    runtime, rows = summary_rows(report)
    header = ["variant", "top-1 (change vs fp32)", "speed-up vs fp32 (p50)", "size", "validation", "ran in"]
    where = "no runtime timed every variant" if runtime is None else f"speed-ups in {_RUNTIME_NAMES[runtime]}"
    return [
        "## Summary",
        "",
        *md_table(header, rows),
        "",
        f"Top-1 in PyTorch on the evaluation data; {where}, against fp32 at the same device, precision, batch "
        "and threads; validation: the exported files against their PyTorch model (details below).",
    ]
