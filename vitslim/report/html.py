"""A self-contained report.html: the Markdown report's tables plus embedded PNG figures (the stage
families' between the accuracy-vs-latency figure and the feature-fidelity one)."""

from __future__ import annotations

import base64
import html

import markdown

from vitslim.report import figures
from vitslim.report.families import family_figures
from vitslim.report.features import feature_figure
from vitslim.report.markdown import render_markdown

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
blockquote { color: #555; border-left: 3px solid #ccc; margin: 0.5em 0; padding-left: 1em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

#: (figure function, caption) of the figures any run may have, in page order: the stage families'
#: figures come after the first of them
FIGURES = (
    (figures.accuracy_vs_latency, "Accuracy against ONNX Runtime latency for every variant."),
    (feature_figure, "Feature fidelity against fp32: cosines of the pooled and patch outputs, neighbour recall."),
)


def _made(report: dict, figs: tuple) -> list[tuple[str, bytes]]:
    return [(caption, png) for make, caption in figs if (png := make(report)) is not None]


def report_figures(report: dict) -> list[tuple[str, bytes]]:
    """``(caption, png)`` of every figure the report has data for."""
    return _made(report, FIGURES[:1]) + family_figures(report) + _made(report, FIGURES[1:])


def html_page(title: str, text: str, extra: str = "") -> str:
    """A self-contained HTML page of the Markdown ``text`` (tables included), then the HTML ``extra``."""
    body = markdown.markdown(text, extensions=["tables"])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}{extra}</body></html>\n"
    )


def figure_html(caption: str, png: bytes) -> str:
    """A captioned ``<figure>`` with ``png`` embedded as a data URI."""
    src, text = f"data:image/png;base64,{base64.b64encode(png).decode()}", html.escape(caption)
    return f'<figure><img alt="{text}" src="{src}"><figcaption>{text}</figcaption></figure>'


def render_html(report: dict) -> str:
    """The whole report as one HTML page (its summary first) with its figures embedded as data URIs."""
    figs = "".join(figure_html(caption, png) for caption, png in report_figures(report))
    section = f"<h2>Figures</h2>{figs}" if figs else ""
    return html_page(f"vitslim report: {report['model']['name']}", render_markdown(report), section)
