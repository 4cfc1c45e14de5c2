"""Reports: report.json (machine-readable) and report.md."""

from vitslim.report.markdown import render_markdown
from vitslim.report.writer import write_report

__all__ = ["render_markdown", "write_report"]
