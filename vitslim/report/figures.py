"""Figures of a report (matplotlib, Agg): each one says which runtime, device, batch, threads,
data and sample count it shows. Every function returns PNG bytes, or None when the report
has nothing to plot for it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vitslim.report.markdown import estimated_bits, report_device, where_measured  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


@contextmanager
def _figure(width: float = 7.0, height: float = 4.2) -> Iterator[tuple[plt.Figure, list]]:
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    yield fig, ax
    plt.close(fig)


def _png(fig: plt.Figure) -> bytes:
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
    png = _png(fig)
    plt.close(fig)
    return png


def tokens_per_layer(report: dict) -> bytes | None:
    """Tokens each block sees, one line per variant (only when some variant reduces tokens)."""
    variants = [v for v in report["variants"] if v.get("tokens_per_layer")]
    if len({tuple(v["tokens_per_layer"]) for v in variants}) < 2:
        return None
    with _figure() as (fig, ax):
        for i, variant in enumerate(variants):
            tokens = variant["tokens_per_layer"]
            ax.plot(tokens, marker="o", ms=3, label=variant["name"], color=COLORS[i % len(COLORS)])
        ax.set_xlabel("block input (last point: output of the last block)")
        ax.set_ylabel("tokens")
        ax.set_title(f"Tokens per block, {report['model']['name']} (static schedule, any input)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return _png(fig)


def bits_per_layer(report: dict) -> bytes | None:
    """Weight and input bits of every quantized site of the last quantized variant."""
    quantized = [v for v in report["variants"] if (v.get("quantization") or {}).get("sites")]
    if not quantized:
        return None
    variant = quantized[-1]
    sites = variant["quantization"]["sites"]
    weights = [(name.removesuffix(".weight"), s) for name, s in sites.items() if s["kind"] == "weight"]
    with _figure(width=max(7.0, 0.16 * len(weights) + 2), height=4.2) as (fig, ax):
        names = [name for name, _ in weights]
        ax.bar(range(len(names)), [s["bits"] for _, s in weights], color=COLORS[0], label="weight bits")
        inputs = [sites.get(f"{name}.input") for name in names]
        xs = [i for i, s in enumerate(inputs) if s]
        ax.scatter(xs, [inputs[i]["bits"] for i in xs], color=COLORS[3], zorder=3, s=14, label="input bits")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("bits")
        ax.set_title(f"Bits per layer of variant {variant['name']} (float layers not shown)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        return _png(fig)


def sensitivity(report: dict) -> bytes | None:
    """Per-layer sensitivity of a mixed-precision plan: damage of each layer alone at each bit-width."""
    plans = [v for v in report["variants"] if (v.get("mixed_precision") or {}).get("sensitivity")]
    if not plans:
        return None
    mp = plans[-1]["mixed_precision"]
    table: dict[str, dict[str, float]] = mp["sensitivity"]
    layers = list(table)
    bits = sorted({int(b) for row in table.values() for b in row})
    estimated = estimated_bits(mp)
    with _figure(width=max(7.0, 0.16 * len(layers) + 2), height=4.2) as (fig, ax):
        for i, b in enumerate(bits):
            ax.plot(
                range(len(layers)),
                [table[layer].get(str(b), float("nan")) for layer in layers],
                marker="o",
                ms=3,
                linestyle="--" if b in estimated else "-",
                label=f"{b}-bit weights" + (" (estimated)" if b in estimated else " (measured)" if estimated else ""),
                color=COLORS[i % len(COLORS)],
            )
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set_ylabel(mp.get("metric", "damage"))
        ax.set_title(
            f"Sensitivity per layer (that layer alone quantized), {mp.get('calibration', 'calibration data')}",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return _png(fig)


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
    with _figure(7.0, 4.5) as (fig, ax):
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
        return _png(fig)
