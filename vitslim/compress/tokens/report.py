"""What reports show of the ``tokens`` stage, rendered from report.json's dicts alone: the entries it
adds to every variant, the accuracy table's tokens and FLOPs columns and the tokens-per-block figure."""

from __future__ import annotations

from typing import TypedDict

from vitslim.report.figures import COLORS, new_figure, to_png

__all__ = ["TokenEntries", "token_columns", "tokens_figure", "token_figures"]


class TokenEntries(TypedDict, total=False):
    """The report-variant keys of the tokens family (every variant, reduced or not)."""

    #: tokens into each transformer block, then out of the last one
    tokens_per_layer: list[int]
    #: attention and MLP FLOPs of the blocks per image, on the tokens each block sees
    block_flops_per_image: int


def token_columns(variants: list[dict]) -> list[tuple[str, list[str]]]:
    """Tokens after the last block and block GFLOPs per image, when every variant has them."""
    if not all("block_flops_per_image" in v for v in variants):
        return []
    return [
        ("tokens after last block", [str(v["tokens_per_layer"][-1]) for v in variants]),
        ("block GFLOPs / image", [f"{v['block_flops_per_image'] / 1e9:.2f}" for v in variants]),
    ]


def tokens_figure(report: dict) -> bytes | None:
    """Tokens each block sees, one line per variant (only when some variant reduces tokens)."""
    variants = [v for v in report["variants"] if v.get("tokens_per_layer")]
    if len({tuple(v["tokens_per_layer"]) for v in variants}) < 2:
        return None
    with new_figure() as (fig, ax):
        for i, variant in enumerate(variants):
            tokens = variant["tokens_per_layer"]
            ax.plot(tokens, marker="o", ms=3, label=variant["name"], color=COLORS[i % len(COLORS)])
        ax.set_xlabel("block input (last point: output of the last block)")
        ax.set_ylabel("tokens")
        ax.set_title(f"Tokens per block, {report['model']['name']} (static schedule, any input)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return to_png(fig)


def token_figures(report: dict) -> list[tuple[str, bytes]]:
    """The tokens-per-block figure, when some variant reduces tokens."""
    png = tokens_figure(report)
    return [] if png is None else [("Tokens each transformer block sees.", png)]
