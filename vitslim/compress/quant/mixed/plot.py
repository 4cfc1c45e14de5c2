"""Matplotlib plot of a Pareto sweep (Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_pareto"]


def plot_pareto(
    series: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    *,
    x: str = "avg_weight_bits",
    y: str = "score",
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    logy: bool = False,
) -> Path:
    """One line (more than 2 points) or marker set per named series of ``{x: .., y: ..}`` points,
    e.g. ``{"greedy path": pareto_sweep(path), "uniform": [...]}``; writes ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>"
    for i, (name, points) in enumerate(series.items()):
        pts = sorted((p[x], p[y]) for p in points if p.get(x) is not None and p.get(y) is not None)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        style = "-" if len(pts) > 2 else ""
        ax.plot(xs, ys, style, marker=markers[i % len(markers)], markersize=3 if len(pts) > 10 else 6, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x.replace("_", " "))
    ax.set_ylabel(ylabel or y.replace("_", " "))
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
