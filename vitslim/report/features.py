"""The report's feature-fidelity part: for runs with ``--output pooled|patch|both`` (or any headless
model measured that way), how each variant's features follow fp32's (:mod:`vitslim.evaluate.features`)."""

from __future__ import annotations

from vitslim.report.format import fmt_num, fmt_pct, md_table

__all__ = ["features_section", "feature_figure", "feature_summary"]

#: (record key, column title) of the table, in order
COLUMNS = (
    ("pooled_cosine", "pooled cosine (mean)"),
    ("pooled_cosine_worst_1pct", "pooled cosine (worst 1%)"),
    ("patch_cosine", "patch cosine (mean)"),
    ("patch_cosine_worst_1pct", "patch cosine (worst 1%)"),
    ("recall_at_1", "neighbour recall@1"),
    ("recall_at_10", "neighbour recall@10"),
    ("knn_top1", "kNN top-1"),
)


def _cell(key: str, value: float | None) -> str:
    return fmt_pct(value) if key.startswith(("recall", "knn")) else fmt_num(value, ".4f")


def features_section(variants: list[dict]) -> list[str]:
    """A table of every variant's feature fidelity against fp32 (nothing when none was measured)."""
    measured = [v for v in variants if v.get("features")]
    if not measured:
        return []
    keys = [(k, title) for k, title in COLUMNS if any(k in v["features"] for v in measured)]
    outputs = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in measured[0]["outputs"].items())
    rows = [[v["name"], *(_cell(k, v["features"].get(k)) for k, _ in keys)] for v in measured]
    return [
        "",
        f"## Feature fidelity vs fp32 (outputs per image: {outputs})",
        "",
        *md_table(["variant", *(title for _, title in keys)], rows),
        "",
        "Cosine per image (pooled) and per patch position (patch), the worst 1% being the 1st percentile; "
        "neighbour recall@k: the share of fp32's k nearest neighbours among the evaluation images that the "
        "variant's embeddings also rank in their k nearest; kNN top-1: cosine-weighted vote of the 10 nearest "
        "evaluation images (leave-one-out), when labelled.",
    ]


def feature_summary(variant: dict) -> str | None:
    """The summary's accuracy cell for a variant judged by its features (None when it has none)."""
    features = variant.get("features")
    if not features:
        return None
    key = "pooled_cosine" if "pooled_cosine" in features else "patch_cosine"
    text = f"{key.split('_')[0]} cosine {features[key]:.4f}"
    recall = features.get("recall_at_10")
    return text if recall is None else f"{text}, recall@10 {fmt_pct(recall)}"


def feature_figure(report: dict) -> bytes | None:
    """Each variant's cosines and neighbour recalls against fp32, as grouped bars."""
    from vitslim.report.figures import COLORS, data_label, device_label, new_figure, to_png

    variants = [v for v in report["variants"] if v.get("features")]
    if not variants:
        return None
    keys = [(k, t) for k, t in COLUMNS if k != "knn_top1" and any(v["features"].get(k) is not None for v in variants)]
    width = 0.8 / len(keys)
    with new_figure(8.0, 4.2) as (fig, ax):
        for i, (key, title) in enumerate(keys):
            values = [v["features"].get(key) or 0.0 for v in variants]
            xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(variants))]
            ax.bar(xs, values, width, label=title, color=COLORS[i % len(COLORS)])
        ax.set_xticks(range(len(variants)), [v["name"] for v in variants])
        low = min(min(v["features"].get(k) or 1.0 for k, _ in keys) for v in variants)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_ylabel("against fp32")
        ax.set_title(f"Feature fidelity, PyTorch, {device_label(report)}\n{data_label(report)}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        return to_png(fig)
