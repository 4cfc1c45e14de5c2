"""Reading report folders back, and comparing several runs in one table."""

from __future__ import annotations

import json
from pathlib import Path

from vitslim.errors import UserError
from vitslim.report.format import fmt_mb, fmt_pct, md_table
from vitslim.report.markdown import device_line, report_device
from vitslim.report.schema import validate_report


def read_report(folder: str | Path) -> dict:
    """The validated report.json of a run folder (a UserError when missing or malformed)."""
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no report.json (give the --out folder of a vitslim run)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        validate_report(report)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path} is not a vitslim report: {exc}") from None
    return report


def _p50(variant: dict, runtime: str, batch: int) -> float | None:
    return next(
        (x["p50_ms"] for x in variant["latency"] if x["runtime"] == runtime and x["batch"] == batch),
        None,
    )


def render_comparison(runs: list[tuple[str, dict]], runtime: str = "onnxruntime") -> str:
    """Markdown table of every variant of every run: accuracy, size and ``runtime`` p50 latency
    per batch with the speed-up against the same run's fp32 (ratios are only taken within a run)."""
    batches = sorted({x["batch"] for _, r in runs for v in r["variants"] for x in v["latency"]})
    header = ["run", "variant", "model", "data", "top-1", "agreement vs fp32", "size"]
    header += [f"{runtime} p50 ms b{b} (vs fp32)" for b in batches]
    rows = []
    for label, report in runs:
        data = f"{report['data']['name']} ({report['data']['samples']})"
        fp32 = report["variants"][0]
        for variant in report["variants"]:
            row = [label, variant["name"], report["model"]["name"], data]
            row += [fmt_pct(variant["top1"]), fmt_pct(variant["agreement"]), fmt_mb(variant["size_bytes"])]
            for b in batches:
                ms, base = _p50(variant, runtime, b), _p50(fp32, runtime, b)
                row.append("n/a" if ms is None else f"{ms:.2f}" + (f" ({base / ms:.2f}x)" if base else ""))
            rows.append(row)
    lines = ["# vitslim comparison", ""]
    lines += [f"- **{label}**: {device_line(report['environment'], report_device(report))}" for label, report in runs]
    lines += ["", *md_table(header, rows), ""]
    lines.append("Latency ratios are within one run (same machine, same session); compare across runs with care.")
    return "\n".join(lines) + "\n"
