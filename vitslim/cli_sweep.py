"""``vitslim sweep``: the command line of :mod:`vitslim.sweep` (registered on the ``vitslim`` group)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from vitslim.cli_options import (
    batch_sizes_option,
    calib_option,
    command_line,
    data_options,
    emit,
    json_option,
    model_options,
    runtime_option,
    runtimes_of,
    show_progress,
)

if TYPE_CHECKING:
    from vitslim.models import LoadedModel


def _split(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command()
@model_options
@click.option(
    "--recipes", required=True, callback=_split, help="Comma-separated built-in recipe names or recipe .yaml files."
)
@click.option(
    "--grid",
    multiple=True,
    help="stage.key=v1,v2 (repeatable): also run every recipe that has the stage with the key set to each "
    "value, e.g. tokens.r=8,16 or quant.mixed_precision.budget.avg_weight_bits=5,6.",
)
@data_options
@calib_option
@click.option(
    "--task-threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads (and Ray CPUs) of each candidate task, whatever the executor: the same figures either way.",
)
@batch_sizes_option
@runtime_option("onnxruntime", files=True)
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True, help="Interleaved timing rounds.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="An existing Ray cluster (e.g. ray://head:10001); default: a local one.")
@click.option("--max-drop", type=click.FloatRange(min=0), help="Accuracy drop bound (points) for the choice.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="The sweep folder.")
@click.option("--overwrite", is_flag=True, help="Start over in an existing sweep folder instead of resuming.")
@json_option
def sweep(
    loaded: LoadedModel,
    recipes: list[str],
    grid: tuple[str, ...],
    out_dir: Path,
    overwrite: bool,
    json_path: Path | None,
    **options: object,
) -> None:
    """Compress, export, validate and time many candidates (recipes, and recipes with one key varied);
    report the accuracy/latency Pareto front and the fastest candidate within --max-drop."""
    from vitslim.sweep import SweepSettings, build_candidates, parse_grid, run_sweep
    from vitslim.sweep.report import render_sweep_markdown

    runtimes_of(str(options["runtime"]))  # a missing runtime: fail before any work
    candidates = build_candidates(recipes, [parse_grid(g) for g in grid])
    options["batch_sizes"] = tuple(options["batch_sizes"])
    settings = SweepSettings(**options)

    def report_progress(name: str, finished: bool) -> None:
        if show_progress():
            click.echo(f"{name}: {'finished' if finished else 'FAILED'}", err=True)

    result = run_sweep(
        loaded, candidates, out_dir, settings, overwrite=overwrite, command=command_line(), progress=report_progress
    )
    click.echo(render_sweep_markdown(result))
    click.echo(f"wrote sweep.json, sweep.md, sweep.html and one folder per candidate into {out_dir}")
    emit(result, json_path)
