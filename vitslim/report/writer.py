"""Writing a run's report.json, report.md and report.html into an output folder."""

from __future__ import annotations

from pathlib import Path

from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.report.html import render_html
from vitslim.report.markdown import render_markdown
from vitslim.report.schema import validate_report


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path, Path]:
    """Validate ``report`` and write report.json, report.md and report.html into ``out_dir``."""
    validate_report(report)
    out_dir = Path(out_dir)
    return (
        atomic_write_json(out_dir / "report.json", report),
        atomic_write_text(out_dir / "report.md", render_markdown(report)),
        atomic_write_text(out_dir / "report.html", render_html(report)),
    )
