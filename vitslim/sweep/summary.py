"""After the candidates ran: time them all side by side on this machine, and sum the sweep up
(every candidate's accuracy, size, validation and latency; the Pareto front; the fastest
candidate within an accuracy-drop bound)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitslim.evaluate.interleaved import runtime_call, summarize, time_interleaved
from vitslim.evaluate.latency import resolve_threads

__all__ = ["FP32", "time_candidates", "summarize_sweep", "pareto_front"]

FP32 = "fp32"


def _final_files(out: Path, reports: dict[str, dict]) -> dict[str, Path]:
    """The fp32 ONNX file (of the first report) and each candidate's last variant's ONNX file."""
    files: dict[str, Path] = {}
    for name, report in reports.items():
        if FP32 not in files:
            files[FP32] = out / name / report["variants"][0]["onnx"]["file"]
        files[name] = out / name / report["variants"][-1]["onnx"]["file"]
    return files


def time_candidates(
    out: Path,
    reports: dict[str, dict],
    runtime: str,
    batch_sizes: Sequence[int],
    threads: int,
    rounds: int,
    input_size: tuple[int, ...],
) -> dict[str, dict[str, dict[str, float]]]:
    """p50/p90 per candidate (and fp32) per batch size, timed interleaved in ``runtime``."""
    files = _final_files(out, reports)
    threads = resolve_threads(threads)
    latency: dict[str, dict[str, dict[str, float]]] = {name: {} for name in files}
    for batch in batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, *input_size), dtype=np.float32)
        calls = {name: runtime_call(path, runtime, threads, x) for name, path in files.items()}
        times = time_interleaved(calls, rounds=rounds, calls=3 if batch == 1 else 1, progress=False)
        for name, values in times.items():
            latency[name][str(batch)] = summarize(values)
    return latency


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (latency, quality) no other point beats on both (lower latency, higher quality)."""
    front = []
    for name, (ms, quality) in points.items():
        dominated = any(
            (o_ms <= ms and o_q >= quality) and (o_ms < ms or o_q > quality)
            for other, (o_ms, o_q) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def _quality(variant: dict) -> float:
    """top-1 when labelled, else agreement with fp32 (cosine for a headless backbone), in percent."""
    for key in ("top1", "agreement", "cosine"):
        if variant.get(key) is not None:
            return 100.0 * variant[key]
    raise ValueError(f"variant {variant.get('name')} has no quality figure")


def summarize_sweep(
    candidates: Sequence[Any],
    reports: dict[str, dict],
    failures: dict[str, dict],
    latency: dict[str, dict[str, dict[str, float]]],
    max_drop: float | None,
) -> dict[str, Any]:
    """Rows for every candidate (finished or not), the Pareto front and the fastest candidate
    whose quality is within ``max_drop`` points of fp32 and whose exports passed validation."""
    rows = []
    base = next(iter(reports.values()))["variants"][0] if reports else None
    batches = sorted({int(b) for entries in latency.values() for b in entries})
    key_batch = str(batches[-1]) if batches else None
    for cand in candidates:
        row: dict[str, Any] = {"name": cand.name, "recipe": cand.base, "change": cand.change}
        if cand.name not in reports:
            row.update(status="failed", error=failures.get(cand.name, {}).get("error", "did not finish"))
            rows.append(row)
            continue
        final = reports[cand.name]["variants"][-1]
        passed = all(v["onnx"]["validation"]["passed"] for v in reports[cand.name]["variants"])
        row.update(
            status="ok" if passed else "validation failed",
            variant=final["name"],
            description=final["description"],
            top1=final.get("top1"),
            agreement=final.get("agreement"),
            quality=_quality(final),
            drop=None if base is None else _quality(base) - _quality(final),
            size_bytes=final["size_bytes"],
            tokens_after=final["tokens_per_layer"][-1],
            latency=latency.get(cand.name, {}),
        )
        rows.append(row)
    fp32 = None
    if base is not None:
        fp32 = {"quality": _quality(base), "top1": base.get("top1"), "latency": latency.get(FP32, {})}
        for row in rows:
            if "latency" in row and row["latency"]:
                row["speedup"] = {b: fp32["latency"][b]["p50_ms"] / t["p50_ms"] for b, t in row["latency"].items()}
    ok = [r for r in rows if r["status"] == "ok" and key_batch in r.get("latency", {})]
    points = {r["name"]: (r["latency"][key_batch]["p50_ms"], r["quality"]) for r in ok}
    if fp32 is not None and key_batch in fp32["latency"]:
        points[FP32] = (fp32["latency"][key_batch]["p50_ms"], fp32["quality"])
    within = [r for r in ok if max_drop is None or r["drop"] <= max_drop]
    best = min(within, key=lambda r: r["latency"][key_batch]["p50_ms"])["name"] if within else None
    return {
        "fp32": fp32,
        "candidates": rows,
        "pareto": pareto_front(points),
        "best": best,
        "decided_on_batch": key_batch,
    }
