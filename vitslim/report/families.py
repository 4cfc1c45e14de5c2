"""What the stage families show in a report: each renders its own accuracy-table columns, Markdown
sections and figures from the report dict (:class:`vitslim.stages.Family`); the report places
them, every family's in the stage table's order. Each family is imported on first use (PyTorch
with it), never when this module is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vitslim import stages as stage_table

__all__ = ["family_columns", "family_sections", "family_figures"]


def _hooks(name: str) -> Iterator[Any]:
    """Every family's hook ``name`` that is set, in the stage table's order."""
    for spec in stage_table.STAGES:
        hook = getattr(spec.load(), name)
        if hook is not None:
            yield hook


def family_columns(variants: list[dict]) -> list[tuple[str, list[str]]]:
    """The families' accuracy-table columns: ``(title, one cell per variant)``."""
    return [column for hook in _hooks("columns") for column in hook(variants)]


def family_sections(variants: list[dict]) -> list[str]:
    """The families' Markdown sections, as lines."""
    return [line for hook in _hooks("sections") for line in hook(variants)]


def family_figures(report: dict) -> list[tuple[str, bytes]]:
    """The families' ``(caption, png)`` figures."""
    return [figure for hook in _hooks("figures") for figure in hook(report)]
