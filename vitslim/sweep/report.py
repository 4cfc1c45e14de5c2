"""The sweep's combined report: sweep.json, sweep.md and a self-contained sweep.html with the
accuracy/latency plot (every candidate, the Pareto front joined, the chosen one marked)."""

from __future__ import annotations

from pathlib import Path

from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.report.figures import sweep_figure
from vitslim.report.html import figure_html, html_page
from vitslim.report.markdown import device_line, fmt_mb, fmt_pct, md_table

__all__ = ["render_sweep_markdown", "write_sweep_report"]


def _latency_cells(row: dict, batches: list[str]) -> list[str]:
    """``p50 (speed-up)`` per batch size; the reference row (no speed-ups) is 1.00x."""
    cells = []
    for batch in batches:
        entry = row.get("latency", {}).get(batch)
        speed = row["speedup"].get(batch) if "speedup" in row else 1.0
        cells.append("n/a" if entry is None or speed is None else f"{entry['p50_ms']:.2f} ({speed:.2f}x)")
    return cells


def render_sweep_markdown(sweep: dict) -> str:
    """A readable summary: settings, one row per candidate, the Pareto front and the choice."""
    settings, summary = sweep["settings"], sweep["summary"]
    batches = [str(b) for b in settings["batch_sizes"]]
    lines = [
        f"# vitslim sweep: {sweep['model']['name']}",
        "",
        f"- **Command**: `{sweep['command']}`",
        f"- **Data**: {sweep['data']['name']}, {sweep['data']['samples']} samples",
        f"- **Candidates ran on**: {settings['executor']}"
        + (f" ({settings['ray_address']})" if settings.get("ray_address") else "")
        + f", wall time {sweep['seconds']['candidates']:.0f} s"
        + (f" (kept from an earlier run: {', '.join(sweep['resumed'])})" if sweep.get("resumed") else ""),
        f"- **Latency**: {settings['runtime']} on {device_line(sweep['environment'])}; {settings['threads']} "
        f"threads, every candidate timed interleaved on this machine after the others finished "
        f"({settings['rounds']} rounds), p50, speed-up against fp32 in the same run",
        "",
    ]
    header = ["candidate", "status", "top-1", "Δ pt vs fp32", "agreement vs fp32", "size", "tokens after last block"]
    header += [f"p50 ms b{b} (speed-up)" for b in batches]
    fp32 = summary["fp32"] or {}
    rows = [["fp32", "reference", fmt_pct(fp32.get("top1")), "—", "100.00%", "", ""] + _latency_cells(fp32, batches)]
    for row in summary["candidates"]:
        if row["status"] == "failed":
            rows.append([row["name"], f"failed: {row['error']}"] + [""] * (len(header) - 2))
            continue
        rows.append(
            [
                row["name"],
                row["status"],
                fmt_pct(row["top1"]),
                f"{0.0 - row['drop']:+.2f}",
                fmt_pct(row["agreement"]),
                fmt_mb(row["size_bytes"]),
                str(row["tokens_after"]),
                *_latency_cells(row, batches),
            ]
        )
    lines += md_table(header, rows)
    front = ", ".join(summary["pareto"]) or "none"
    bound = "any drop" if settings["max_drop"] is None else f"a drop of at most {settings['max_drop']:g} pt"
    best = summary["best"] or "none (no finished, validated candidate within the bound)"
    lines += ["", f"Pareto front (faster or better than every other, batch {summary['decided_on_batch']}): {front}."]
    lines += ["", f"**Fastest candidate with {bound} and every export validated: {best}.**"]
    lines += ["", "Each candidate's own report (every stage, validation, the exported files) is in its folder."]
    return "\n".join(lines) + "\n"


def write_sweep_report(out: Path, sweep: dict) -> None:
    """sweep.json, sweep.md and sweep.html (with the plot) into ``out``."""
    text = render_sweep_markdown(sweep)
    atomic_write_json(out / "sweep.json", sweep)
    atomic_write_text(out / "sweep.md", text)
    png = sweep_figure(sweep)
    figure = "" if png is None else figure_html("Accuracy against latency of every candidate.", png)
    atomic_write_text(out / "sweep.html", html_page(f"vitslim sweep: {sweep['model']['name']}", text, figure))
