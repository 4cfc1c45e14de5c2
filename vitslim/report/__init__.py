"""Reports: report.json (machine-readable), report.md and a self-contained report.html."""

from vitslim.report.markdown import render_markdown
from vitslim.report.writer import write_report

__all__ = ["render_markdown", "write_report"]
