"""``vitslim search-tokens``: search a token-reduction schedule on calibration images under a FLOPs
or a measured latency budget and write it into a recipe (:mod:`vitslim.compress.tokens.search`,
:mod:`vitslim.pipeline.token_latency`; registered on the ``vitslim`` group)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from vitslim.cli_options import (
    calib_option,
    command_line,
    emit,
    json_option,
    model_options,
    runtime_option,
    show_progress,
    threads_option,
)
from vitslim.errors import UserError

if TYPE_CHECKING:
    from vitslim.compress.tokens.search import Candidate
    from vitslim.models import LoadedModel
    from vitslim.pipeline.token_latency import Measured


@click.command(name="search-tokens")
@model_options
@click.option("--method", type=click.Choice(["tome", "prunemerge"]), default="prunemerge", show_default=True)
@click.option(
    "--flops-ratio",
    type=click.FloatRange(0, 1, min_open=True),
    help="Budget: block FLOPs at most this fraction of the unreduced model's.",
)
@click.option(
    "--latency-ratio",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Budget: p50 latency in --runtime at --batch-size at most this fraction of the unreduced model's, "
    "measured (both timed interleaved).",
)
@runtime_option("openvino", files=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Batch timed (latency).")
@threads_option
@click.option(
    "--timings", type=click.IntRange(min=1), default=4, show_default=True, help="FLOPs budgets searched and timed."
)
@calib_option
@click.option("--images", type=click.IntRange(min=1), default=64, show_default=True, help="Calibration images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--max-evals", type=click.IntRange(min=1), default=16, show_default=True, help="Candidates to score.")
@click.option("--class-token-last-block", is_flag=True, help="Also compute the last block for the class token only.")
@click.option("--recipe", "base", help="Recipe (name or .yaml) whose tokens stage is replaced; default: tokens only.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Recipe .yaml")
@json_option
def search_tokens(
    loaded: LoadedModel,
    method: str,
    flops_ratio: float | None,
    latency_ratio: float | None,
    runtime: str,
    batch_size: int,
    threads: int,
    timings: int,
    calib: str | None,
    images: int,
    seed: int,
    max_evals: int,
    class_token_last_block: bool,
    base: str | None,
    out_path: Path,
    json_path: Path | None,
) -> None:
    """Search where and how much to reduce tokens under a FLOPs budget or a latency budget measured in
    a runtime (fidelity to the unreduced model on calibration images, no labels) and write the chosen
    schedule into a recipe, explicit per block so that it reruns exactly."""
    from vitslim.compress.tokens.search import search_schedule
    from vitslim.files import atomic_write_text
    from vitslim.pipeline import StageContext
    from vitslim.pipeline.token_latency import LatencyTarget, search_latency
    from vitslim.recipes import recipe_with_stage, recipe_yaml

    if (flops_ratio is None) == (latency_ratio is None):
        raise UserError("give one budget: --flops-ratio or --latency-ratio")
    batches = StageContext(loaded, calib=calib, seed=seed, progress=False).calibration(images)

    def report(cand: Candidate) -> None:
        if show_progress():
            click.echo(
                f"{cand.config.describe()}: FLOPs {cand.flops_ratio:.3f}, KL {cand.divergence:.4g}, "
                f"agreement {cand.agreement:.2%}",
                err=True,
            )

    def report_timed(measured: Measured) -> None:
        if show_progress():
            click.echo(f"FLOPs budget {measured.flops_budget:.3f}: latency {measured.latency_ratio:.3f}", err=True)
            report(measured.candidate)

    options = {"max_evals": max_evals, "class_token_last_block": class_token_last_block}
    if latency_ratio is not None:
        target = LatencyTarget(runtime, batch_size, threads)
        found = search_latency(
            loaded.model, batches, method, latency_ratio, target, loaded.input_size,
            max_timings=timings, progress=report_timed, **options,
        )  # fmt: skip
        best, record = found.best.candidate, {**found.best.to_dict(), "timed": [m.to_dict() for m in found.timed]}
    else:
        found = search_schedule(loaded.model, batches, method, flops_ratio, progress=report, **options)
        best, record = found.best, {**found.best.to_dict(), "tried": [c.to_dict() for c in found.tried]}
    data = recipe_with_stage(
        base, "tokens", best.config.to_dict(), out_path.stem, f"{best.config.describe()} (searched)"
    )
    comment = [
        f"Written by: {command_line()}",
        f"Model {loaded.name}; calibration {calib or loaded.default_calib}, seed {seed}.",
        found.summary(),
    ]
    atomic_write_text(out_path, recipe_yaml(data, comment))
    click.echo(found.summary())
    click.echo(f"wrote {out_path}")
    emit({"search": record}, json_path)
