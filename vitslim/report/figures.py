"""Figures of a report (matplotlib, Agg): each one says which runtime, device, batch, threads,
data and sample count it shows. Every function returns PNG bytes, or None when the report
has nothing to plot for it. The stage families draw theirs (tokens, bits, sensitivity) with the
helpers here: :func:`new_figure`, :func:`to_png`, :data:`COLORS`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vitslim.report.markdown import report_device, where_measured  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


@contextmanager
def new_figure(width: float = 7.0, height: float = 4.2) -> Iterator[tuple[plt.Figure, list]]:
    """A figure and its axes, closed when the block ends."""
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    yield fig, ax
    plt.close(fig)


def to_png(fig: plt.Figure) -> bytes:
    """``fig`` laid out and drawn as PNG bytes."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def device_label(report: dict) -> str:
    return where_measured(report["environment"], report_device(report))


def data_label(report: dict) -> str:
    data = report["data"]
    return f"{data['name']}, {data['samples']} samples"


def _quality(report: dict) -> tuple[str, list[float]]:
    """top-1 when the data is labelled and the model classifies, else agreement with fp32 (cosine
    similarity for a headless backbone, whose outputs are features)."""
    variants = report["variants"]
    if all(v.get("top1") is not None for v in variants):
        return "top-1 (%)", [100 * v["top1"] for v in variants]
    if any(v["agreement"] is None for v in variants):
        return "cosine similarity with fp32", [v["cosine"] for v in variants]
    return "top-1 agreement with fp32 (%)", [100 * v["agreement"] for v in variants]


def accuracy_vs_latency(report: dict, runtime: str = "onnxruntime") -> bytes | None:
    """Quality against p50 latency of ``runtime``, one panel per batch size."""
    variants = report["variants"]
    batches = sorted({lat["batch"] for v in variants for lat in v["latency"] if lat["runtime"] == runtime})
    if not batches:
        return None
    label, quality = _quality(report)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 4.2), dpi=110, squeeze=False)
    threads = ""
    for ax, batch in zip(axes[0], batches, strict=True):
        for i, (variant, q) in enumerate(zip(variants, quality, strict=True)):
            lat = next((x for x in variant["latency"] if x["runtime"] == runtime and x["batch"] == batch), None)
            if lat is None:
                continue
            threads = lat["threads"]
            ax.scatter(lat["p50_ms"], q, color=COLORS[i % len(COLORS)], s=40, zorder=3)
            ax.annotate(variant["name"], (lat["p50_ms"], q), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(f"{runtime} p50 latency, batch {batch} (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Accuracy vs latency: {runtime} on {device_label(report)}, {threads} threads, random inputs\n"
        f"accuracy on {data_label(report)}",
        fontsize=9,
    )
    png = to_png(fig)
    plt.close(fig)
    return png


def sweep_figure(sweep: dict) -> bytes | None:
    """A sweep's quality against p50 latency at its deciding batch size, the Pareto front joined and
    the chosen candidate marked; None without finished candidates."""
    summary = sweep["summary"]
    batch = summary["decided_on_batch"]
    points = {
        r["name"]: (r["latency"][batch]["p50_ms"], r["quality"])
        for r in summary["candidates"]
        if r["status"] != "failed" and batch in r.get("latency", {})
    }
    fp32 = summary["fp32"]
    if fp32 and batch in fp32["latency"]:
        points["fp32"] = (fp32["latency"][batch]["p50_ms"], fp32["quality"])
    if not points:
        return None
    with new_figure(7.0, 4.5) as (fig, ax):
        for name, (ms, quality) in points.items():
            ax.scatter(ms, quality, color="tab:red" if name == summary["best"] else "tab:blue", zorder=3)
            ax.annotate(name, (ms, quality), textcoords="offset points", xytext=(4, 4), fontsize=8, rotation=25)
        front = [points[n] for n in summary["pareto"] if n in points]
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:gray", linestyle="--", label="Pareto front")
        settings = sweep["settings"]
        ax.set_xlabel(f"{settings['runtime']} p50 latency, batch {batch}, {settings['threads']} threads (ms)")
        ax.set_ylabel("top-1 (%)" if fp32 and fp32.get("top1") is not None else "agreement with fp32 (%)")
        data = sweep["data"]
        ax.set_title(f"{sweep['model']['name']}: {data['name']}, {data['samples']} images", fontsize=9)
        ax.margins(x=0.12, y=0.3)  # room for the labels
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return to_png(fig)
