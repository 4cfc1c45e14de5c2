"""The ten-second summary that opens a report: per variant, what it costs and what it gains.

One row per variant: top-1 and its change against fp32, the speed-up against fp32 in the runtime a
deployment would use (the registered runtime of lowest ``deploy_rank`` that timed every variant:
OpenVINO, else ONNX Runtime, else PyTorch; same device, precision, batch and threads) with its
noise verdict (:mod:`vitslim.evaluate.speedup`), the file size, the export's validation verdict
and which runtime and precision ran it.
"""

from __future__ import annotations

from typing import Any

from vitslim.evaluate.speedup import MIN_EFFECT, MIN_ROUNDS, Speedup, speedup
from vitslim.report.features import feature_summary
from vitslim.report.format import fmt_mb, fmt_pct, md_table
from vitslim.runtimes import RUNTIMES, deployment_runtime

__all__ = ["timed_runtime", "same_graph_as", "speedups", "slower_than_fp32", "summary_rows", "summary_section"]


def timed_runtime(variants: list[dict]) -> str | None:
    """The deployment runtime (:func:`~vitslim.runtimes.deployment_runtime`) among those that timed
    every variant (None: none did)."""
    timed = set.intersection(*({entry["runtime"] for entry in v["latency"]} for v in variants))
    return deployment_runtime(timed)


def _title(runtime: str) -> str:
    return RUNTIMES[runtime].title if runtime in RUNTIMES else runtime


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


def speedups(variant: dict, fp32: dict, runtime: str, settings: set[tuple] | None = None) -> list[tuple[int, Speedup]]:
    """Per batch size, ``variant``'s speed-up over ``fp32`` in ``runtime`` at the same device
    (precision) and threads, for the ``settings`` given (default: all; fp32's extra exact-precision
    runs are left out by them); a variant whose ONNX graph is fp32's with other weights is never
    judged faster or slower."""
    base = {_setting(e): e for e in fp32["latency"] if e["runtime"] == runtime}
    same_graph = variant is not fp32 and same_graph_as(variant, fp32)
    return [
        (entry["batch"], speedup(base[_setting(entry)], entry, same_graph))
        for entry in variant["latency"]
        if entry["runtime"] == runtime and _setting(entry) in base and (settings is None or _setting(entry) in settings)
    ]


def same_graph_as(variant: dict, base: dict) -> bool:
    """Whether ``variant``'s ONNX graph is ``base``'s with other weights at most (equal graph
    signatures; reports before signatures: the graph traced for ``base`` reused)."""
    onnx, base_onnx = variant.get("onnx") or {}, base.get("onnx") or {}
    if onnx.get("graph_sha256") and base_onnx.get("graph_sha256"):
        return onnx["graph_sha256"] == base_onnx["graph_sha256"]
    return onnx.get("graph_of") == base["name"]


def _speedup(variant: dict, fp32: dict, runtime: str, settings: set[tuple]) -> str:
    """The summary's speed-up cell, for the ``settings`` every variant was timed at."""
    parts = [s.text(batch) for batch, s in speedups(variant, fp32, runtime, settings)]
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
    return RUNTIMES[runtime].ran_in(variant, device) if runtime in RUNTIMES else f"{runtime} {device}"


def summary_rows(report: dict[str, Any]) -> tuple[str | None, list[list[str]]]:
    """The deployment runtime the speed-ups are taken in, and a table row per variant."""
    variants = report["variants"]
    fp32, runtime = variants[0], timed_runtime(variants)
    settings = {_setting(e) for e in variants[-1]["latency"] if e["runtime"] == runtime}
    rows = []
    for v in variants:
        size = fmt_mb(v["size_bytes"])
        if v is not fp32 and v["size_bytes"] and fp32["size_bytes"]:
            size += f" ({v['size_bytes'] / fp32['size_bytes']:.2f}x)"
        speed = "n/a" if runtime is None else "baseline" if v is fp32 else _speedup(v, fp32, runtime, settings)
        ran = "n/a" if runtime is None else _precision(v, runtime)
        rows.append([v["name"], _accuracy(v, fp32), speed, size, _verdict(v), ran])
    return runtime, rows


def slower_than_fp32(report: dict[str, Any]) -> list[str]:
    """A sentence per batch size at which the report's final variant is measurably slower than fp32
    in the deployment runtime (every round agreeing: :mod:`vitslim.evaluate.speedup`)."""
    variants = report["variants"]
    runtime = timed_runtime(variants)
    if runtime is None or len(variants) < 2:
        return []
    final = variants[-1]
    return [
        f"{final['name']} is slower than fp32 in {_title(runtime)} at batch {batch}: {s.ratio:.2f}x "
        f"(rounds between {s.low:.2f}x and {s.high:.2f}x)"
        for batch, s in speedups(final, variants[0], runtime)
        if s.verdict == "slower"
    ]


def summary_section(report: dict[str, Any]) -> list[str]:
    """The summary's Markdown lines."""
    runtime, rows = summary_rows(report)
    header = ["variant", "top-1 (change vs fp32)", "speed-up vs fp32 (p50)", "size", "validation", "ran in"]
    where = "no runtime timed every variant" if runtime is None else f"speed-ups in {_title(runtime)}"
    return [
        "## Summary",
        "",
        *md_table(header, rows),
        "",
        f"Top-1 in PyTorch on the evaluation data; {where}, against fp32 at the same device, precision, batch "
        f"and threads, all timed interleaved; a speed-up is claimed only when at least {MIN_ROUNDS} paired rounds "
        f"agree on it by a sign test (5 of 5, 9 of 10, 12 of 15 rounds) and it exceeds {100 * MIN_EFFECT:.0f}% "
        "(otherwise: within noise, with the range of the per-round ratios); validation: the exported files against "
        "their PyTorch model (details below).",
        *(f"\n**Warning**: {line}." for line in slower_than_fp32(report)),
    ]
