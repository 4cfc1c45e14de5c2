"""``--recipe auto``: the fastest recipe for this machine within an accuracy bound.

1. The probe (:mod:`vitslim.runtimes.probe`) times the model's first block in float, with int8
   Linears and with int8 ``q @ kᵀ`` in the deployment runtime at the run's batch sizes: int8
   recipes are candidates only where int8 Linears pay there at every batch size, and those with
   int8 attention matmuls only where int8 ``q @ kᵀ`` pays too (else the ``cpu`` recipe with q and
   k left float is the int8 candidate).
2. The candidates (token reduction alone, and with int8 where it pays) are compressed, validated
   and timed side by side by the sweep (:mod:`vitslim.sweep`: interleaved, in the deployment
   runtime), into ``<out>/auto``.
3. The fastest candidate at the largest batch size whose top-1 (or agreement) is within
   ``max_drop`` points of fp32 and whose exports passed validation wins; the caller compresses
   it like any recipe, its recipe saved beside the report so that a rerun is exact.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitslim.errors import UserError
from vitslim.models import LoadedModel
from vitslim.pipeline.options import Evaluation, Timing
from vitslim.recipes import Recipe, parse_recipe, recipe_source
from vitslim.runtimes import RUNTIMES, deployment_runtime
from vitslim.runtimes.probe import int8_pays, probe

if TYPE_CHECKING:
    from vitslim.sweep import Candidate

__all__ = ["AUTO", "TOKEN_RECIPES", "INT8_RECIPES", "LINEAR_INT8", "AutoChoice", "choose_recipe"]

log = logging.getLogger(__name__)

#: the ``--recipe`` value that asks for this
AUTO = "auto"
#: built-in recipes reducing tokens only: candidates on every machine
TOKEN_RECIPES = ("tome-r8", "tome-r16-decreasing")
#: built-in recipes with int8 Linears and attention matmuls: candidates where the probe finds both faster
INT8_RECIPES = ("cpu", "w8a8")
#: the int8 candidate where int8 Linears pay and int8 q·kᵀ does not: this recipe with q and k float
LINEAR_INT8 = "cpu"


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
    rows = probe(loaded.model, loaded.input_size, [runtime], timing.batch_sizes, timing.threads)
    pays = {
        layer: all(int8_pays(rows, runtime, layer, batch) for batch in timing.batch_sizes)
        for layer in ("linear", "attention")
    }
    candidates = build_candidates(TOKEN_RECIPES)
    if pays["linear"]:
        candidates += build_candidates(INT8_RECIPES) if pays["attention"] else [linear_int8_candidate()]
    recipes = [c.name for c in candidates]
    why_int8 = "int8 Linears are not measurably faster"
    if pays["linear"]:
        why_int8 = "int8 Linears are faster" + (", int8 q·kᵀ too" if pays["attention"] else ", int8 q·kᵀ is not")
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


def linear_int8_candidate() -> Candidate:
    """The :data:`LINEAR_INT8` recipe with q and k left float: int8 only where the Linears pay."""
    from vitslim.sweep import Candidate

    data, source, default = recipe_source(LINEAR_INT8)
    changed = copy.deepcopy(data)
    changed["name"] = name = f"{changed.get('name', default)}-linear-int8"
    changed["description"] = f"{changed.get('description', default)}; q·kᵀ left float (int8 does not pay here)"
    changed["stages"]["quant"].setdefault("config", {})["qk"] = None
    change = "quant.config.qk=null"
    return Candidate(name, parse_recipe(changed, f"{source} with {change}", name), LINEAR_INT8, change)


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
