"""``--recipe auto``: the fastest recipe for this machine within an accuracy bound.

1. The probe (:mod:`vitslim.runtimes.probe`) times the model's Linear shapes in float and int8 in
   the deployment runtime at the run's batch sizes: int8 recipes are candidates only where int8
   pays there at every batch size.
2. The candidates (token reduction alone, and with int8 where it pays) are compressed, validated
   and timed side by side by the sweep (:mod:`vitslim.sweep`: interleaved, in the deployment
   runtime), into ``<out>/auto``.
3. The fastest candidate at the largest batch size whose top-1 (or agreement) is within
   ``max_drop`` points of fp32 and whose exports passed validation wins; the caller compresses
   it like any recipe, its recipe saved beside the report so that a rerun is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitslim.errors import UserError
from vitslim.models import LoadedModel
from vitslim.pipeline.options import Evaluation, Timing
from vitslim.recipes import Recipe
from vitslim.runtimes import RUNTIMES, deployment_runtime
from vitslim.runtimes.probe import int8_pays, probe, probe_shape

__all__ = ["AUTO", "TOKEN_RECIPES", "INT8_RECIPES", "AutoChoice", "choose_recipe"]

log = logging.getLogger(__name__)

#: the ``--recipe`` value that asks for this
AUTO = "auto"
#: built-in recipes reducing tokens only: candidates on every machine
TOKEN_RECIPES = ("tome-r8", "tome-r16-decreasing")
#: built-in recipes with int8 activations: candidates where the probe finds int8 Linears faster
INT8_RECIPES = ("cpu", "w8a8")


@dataclass(frozen=True)
class AutoChoice:
    """The winning recipe, and what the report says about the choice (``record``: the probe rows, the
    candidates with their figures and why each lost; ``notes``: the same in sentences)."""

    recipe: Recipe
    record: dict[str, Any]
    notes: list[str]


def choose_recipe(
    loaded: LoadedModel, evaluation: Evaluation, timing: Timing, max_drop: float, workdir: Path, progress: bool = True
) -> AutoChoice:
    """Probe, sweep the candidates into ``workdir`` and return the winner (module docstring)."""
    from vitslim.sweep import SweepSettings, build_candidates, run_sweep

    runtime = deployment_runtime(r for r in timing.runtimes if not RUNTIMES[r].runs_model)
    if runtime is None:
        raise UserError("--recipe auto needs a runtime that runs exported files (--runtime onnxruntime, openvino, all)")
    rows = probe(probe_shape(loaded.model, loaded.input_size), [runtime], timing.batch_sizes, timing.threads)
    pays = all(int8_pays(rows, runtime, "linear", batch) for batch in timing.batch_sizes)
    recipes = [*TOKEN_RECIPES, *(INT8_RECIPES if pays else ())]
    why_int8 = "int8 Linears are faster" if pays else "int8 Linears are not measurably faster"
    log.info("auto: %s in %s here; candidates %s", why_int8, RUNTIMES[runtime].title, ", ".join(recipes))
    settings = SweepSettings(
        data=evaluation.data,
        calib=evaluation.calib,
        limit=evaluation.limit,
        seed=evaluation.seed,
        batch_size=evaluation.batch_size,
        runtime=runtime,
        threads=timing.threads,
        batch_sizes=tuple(timing.batch_sizes),
        max_drop=max_drop,
    )
    candidates = build_candidates(recipes)
    sweep = run_sweep(loaded, candidates, workdir, settings, overwrite=True, command="vitslim compress --recipe auto")
    summary = sweep["summary"]
    if summary["best"] is None:
        raise UserError(
            f"--recipe auto: no candidate ({', '.join(recipes)}) stays within --max-drop {max_drop:g} points of fp32 "
            f"with validated exports; see {workdir / 'sweep.md'}"
        )
    best = next(c for c in candidates if c.name == summary["best"])
    lost = [_why_lost(row, summary, max_drop) for row in summary["candidates"] if row["name"] != best.name]
    notes = [
        f"--recipe auto on this machine: {why_int8} in {RUNTIMES[runtime].title} (probe, batch "
        f"{', '.join(map(str, timing.batch_sizes))}); candidates {', '.join(recipes)}, timed side by side; "
        f"{best.name} is the fastest at batch {summary['decided_on_batch']} within {max_drop:g} pt of fp32 "
        f"(its recipe: recipe.yaml).",
        *lost,
    ]
    record = {"runtime": runtime, "max_drop": max_drop, "probe": rows, "best": best.name, "sweep": summary}
    return AutoChoice(best.recipe, record, notes)


def _why_lost(row: dict[str, Any], summary: dict[str, Any], max_drop: float) -> str:
    """Why the sweep's candidate ``row`` was not chosen, in one sentence."""
    name, batch = row["name"], summary["decided_on_batch"]
    if row["status"] != "ok":
        return f"auto: {name} lost: {row['status']}" + (f" ({row['error']})" if row.get("error") else "") + "."
    if row["drop"] > max_drop:
        return f"auto: {name} lost: {row['drop']:.2f} pt below fp32 (bound {max_drop:g} pt)."
    best = next(r for r in summary["candidates"] if r["name"] == summary["best"])
    return (
        f"auto: {name} lost: slower at batch {batch} (p50 {row['latency'][batch]['p50_ms']:.2f} ms against "
        f"{best['latency'][batch]['p50_ms']:.2f} ms)."
    )
