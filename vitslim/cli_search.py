"""``vitslim search-tokens``: search a token-reduction schedule on calibration images and write it
into a recipe (:mod:`vitslim.compress.tokens.search`; registered on the ``vitslim`` group)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from vitslim.cli_options import calib_option, command_line, emit, json_option, model_options, show_progress

if TYPE_CHECKING:
    from vitslim.compress.tokens.search import Candidate
    from vitslim.models import LoadedModel


@click.command(name="search-tokens")
@model_options
@click.option("--method", type=click.Choice(["tome", "prunemerge"]), default="prunemerge", show_default=True)
@click.option(
    "--flops-ratio",
    type=click.FloatRange(0, 1, min_open=True),
    required=True,
    help="Budget: block FLOPs at most this fraction of the unreduced model's.",
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
    flops_ratio: float,
    calib: str | None,
    images: int,
    seed: int,
    max_evals: int,
    class_token_last_block: bool,
    base: str | None,
    out_path: Path,
    json_path: Path | None,
) -> None:
    """Search where and how much to reduce tokens under a FLOPs budget (fidelity to the unreduced
    model on calibration images, no labels) and write the chosen schedule into a recipe."""
    from vitslim.compress.tokens.search import search_schedule
    from vitslim.files import atomic_write_text
    from vitslim.pipeline import StageContext
    from vitslim.recipes import recipe_with_stage, recipe_yaml

    batches = StageContext(loaded, calib=calib, seed=seed, progress=False).calibration(images)

    def report(cand: Candidate) -> None:
        if show_progress():
            click.echo(
                f"{cand.config.describe()}: FLOPs {cand.flops_ratio:.3f}, KL {cand.divergence:.4g}, "
                f"agreement {cand.agreement:.2%}",
                err=True,
            )

    result = search_schedule(
        loaded.model, batches, method, flops_ratio, max_evals=max_evals,
        class_token_last_block=class_token_last_block, progress=report,
    )  # fmt: skip
    data = recipe_with_stage(
        base, "tokens", result.best.config.to_dict(), out_path.stem, f"{result.best.config.describe()} (searched)"
    )
    comment = [
        f"Written by: {command_line()}",
        f"Model {loaded.name}; calibration {calib or loaded.default_calib}, seed {seed}.",
        result.summary(),
    ]
    atomic_write_text(out_path, recipe_yaml(data, comment))
    click.echo(result.summary())
    click.echo(f"wrote {out_path}")
    emit({"search": {**result.best.to_dict(), "tried": [c.to_dict() for c in result.tried]}}, json_path)
