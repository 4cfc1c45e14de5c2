"""What reports show of the ``quant`` stage, rendered from report.json's dicts alone: the entries it
adds to a variant, the Quantization section (sites and bits, ONNX format, mixed-precision costs) and
the bits-per-layer and sensitivity figures."""

from __future__ import annotations

from collections import Counter
from typing import Any, TypedDict

from vitslim.report.figures import COLORS, new_figure, to_png
from vitslim.report.format import fmt_mb, md_table

__all__ = ["QuantEntries", "estimated_bits", "quant_section", "quant_figures", "bits_per_layer", "sensitivity"]


class QuantEntries(TypedDict, total=False):
    """The report-variant keys of the quant family."""

    #: every variant: its config and calibration settings and, per quantized site, its kind,
    #: quantizer and bits (None: not quantized)
    quantization: dict[str, Any] | None
    #: the variant quantized last, when its bits were planned: the plan, costs, search seconds,
    #: per-layer sensitivity (layer -> bits -> damage), which widths were measured, metric, calibration
    mixed_precision: dict[str, Any]


def _quantized(variants: list[dict]) -> list[dict]:
    return [v for v in variants if (v.get("quantization") or {}).get("sites")]


def estimated_bits(mp: dict) -> list[int]:
    """Weight widths of a mixed-precision summary whose sensitivity was estimated, not run
    through the model (empty when the report does not say which were measured)."""
    if mp.get("measured_bits") is None:
        return []
    widths = sorted({int(b) for row in mp["sensitivity"].values() for b in row})
    return [b for b in widths if b not in mp["measured_bits"]]


def _bit_counts(sites: dict, weights: bool) -> str:
    counts: dict[int, int] = {}
    for site in sites.values():
        if (site["kind"] == "weight") == weights:
            counts[site["bits"]] = counts.get(site["bits"], 0) + 1
    return ", ".join(f"{n} at {b} bit" for b, n in sorted(counts.items())) or "none"


def _mixed_precision_text(name: str, mp: dict) -> str:
    costs = mp["costs"]
    text = (
        f"{name}: mixed precision reached {costs['avg_weight_bits']:.2f} average weight bits "
        f"(parameter-weighted), {fmt_mb(costs.get('size_bytes'))}, in {mp['seconds']:.0f} s "
        f"(sensitivity: {mp['metric']}, {mp['calibration']}; cache {mp.get('sensitivity_cache')})."
    )
    estimated = ", ".join(f"{b}-bit" for b in estimated_bits(mp))
    if estimated and not mp["measured_bits"]:
        text += " No width was run through the model: every sensitivity is a second-order estimate."
    elif estimated:
        measured = ", ".join(f"{b}-bit" for b in mp["measured_bits"])
        text += (
            f" Sensitivity of {measured} weights run through the model; "
            f"{estimated} estimated from each layer's own output error."
        )
    if "drop" in mp:
        text += f" Drop measured during the search: {mp['drop']['measured']:.2f} pt."
    return text


def stored_types(onnx: dict) -> str:
    """What the file stores the quantized weights in, e.g. ``60 int4, 12 int8`` (``n/a`` without a table)."""
    counts = Counter(row["onnx_type"] for row in (onnx.get("precision") or {}).values() if row["kind"] == "weight")
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "n/a"


def _tensorrt_text(readiness: dict | None) -> str:
    """``ready`` or the names of the failed readiness checks (``n/a`` without a Q/DQ export)."""
    if readiness is None:
        return "n/a"
    if readiness["ready"]:
        return "ready"
    return "not ready: " + ", ".join(dict.fromkeys(f["check"] for f in readiness["findings"]))


def quant_section(variants: list[dict]) -> list[str]:
    """Per quantized variant: sites and bits, how the ONNX file carries them, whether TensorRT's
    explicit INT8 takes it (the readiness findings listed below the table), mixed-precision costs."""
    quantized = _quantized(variants)
    if not quantized:
        return []
    rows = []
    for v in quantized:
        sites = v["quantization"]["sites"]
        onnx = v.get("onnx") or {}
        rows.append(
            [
                v["name"],
                str(len(sites)),
                _bit_counts(sites, weights=True),
                _bit_counts(sites, weights=False),
                str(onnx.get("format", "n/a")),
                stored_types(onnx),
                fmt_mb(v.get("size_bytes")),
                _tensorrt_text(onnx.get("tensorrt")),
            ]
        )
    lines = ["", "## Quantization", ""]
    header = ["variant", "quantized sites", "weights", "activations", "ONNX format", "weights stored", "file"]
    lines += md_table([*header, "TensorRT INT8"], rows)
    for v in quantized:
        for finding in ((v.get("onnx") or {}).get("tensorrt") or {}).get("findings", []):
            nodes = finding["nodes"]
            where = f" ({len(nodes)}: {', '.join(nodes[:2])}{', ...' if len(nodes) > 2 else ''})" if nodes else ""
            lines.append(f"- {v['name']}, TensorRT `{finding['check']}`: {finding['message']}{where}")
    for v in quantized:
        if v.get("mixed_precision"):
            lines += ["", _mixed_precision_text(v["name"], v["mixed_precision"])]
    return lines


def bits_per_layer(report: dict) -> bytes | None:
    """Weight and input bits of every quantized site of the last quantized variant."""
    quantized = _quantized(report["variants"])
    if not quantized:
        return None
    variant = quantized[-1]
    sites = variant["quantization"]["sites"]
    weights = [(name.removesuffix(".weight"), s) for name, s in sites.items() if s["kind"] == "weight"]
    with new_figure(width=max(7.0, 0.16 * len(weights) + 2), height=4.2) as (fig, ax):
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
        return to_png(fig)


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
    with new_figure(width=max(7.0, 0.16 * len(layers) + 2), height=4.2) as (fig, ax):
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
        return to_png(fig)


#: (figure function, caption), in page order
FIGURES = (
    (bits_per_layer, "Weight and input bits per layer."),
    (sensitivity, "Per-layer sensitivity used by the mixed-precision allocation."),
)


def quant_figures(report: dict) -> list[tuple[str, bytes]]:
    """``(caption, png)`` of the bits-per-layer and sensitivity figures the report has data for."""
    return [(caption, png) for make, caption in FIGURES if (png := make(report)) is not None]
