"""Formatting report values and Markdown tables."""

from __future__ import annotations

__all__ = ["fmt_pct", "fmt_num", "fmt_mb", "md_table"]


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def fmt_num(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def fmt_mb(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 1e6:.1f} MB"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
