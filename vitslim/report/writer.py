"""Writing a run's report.json, report.md and report.html into an output folder."""

from __future__ import annotations

from pathlib import Path

from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.report.html import render_html
from vitslim.report.markdown import render_markdown

REQUIRED_TOP = ("model", "data", "environment", "variants")
REQUIRED_VARIANT = ("name", "top1", "top5", "agreement", "size_bytes", "latency")
REQUIRED_LATENCY = ("runtime", "batch", "threads", "p50_ms", "p90_ms", "images_per_s")


def validate_report(report: dict) -> None:
    """Raise ValueError unless ``report`` follows the report.json contract."""
    missing = [k for k in REQUIRED_TOP if k not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")
    if not report["variants"] or report["variants"][0]["name"] != "fp32":
        raise ValueError("the first variant must be the uncompressed model named 'fp32'")
    for variant in report["variants"]:
        lacking = [k for k in REQUIRED_VARIANT if k not in variant]
        lacking += [f"latency.{k}" for entry in variant["latency"] for k in REQUIRED_LATENCY if k not in entry]
        if lacking:
            raise ValueError(f"variant {variant.get('name')} lacks {lacking}")


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path, Path]:
    """Validate ``report`` and write report.json, report.md and report.html into ``out_dir``."""
    validate_report(report)
    out_dir = Path(out_dir)
    return (
        atomic_write_json(out_dir / "report.json", report),
        atomic_write_text(out_dir / "report.md", render_markdown(report)),
        atomic_write_text(out_dir / "report.html", render_html(report)),
    )
