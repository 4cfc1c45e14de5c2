"""The compress run: apply a recipe's stages cumulatively and measure every step against fp32.

The stages are those of the stage table (:mod:`vitslim.stages`): each model stage's family applies
its config and says what the report carries about it; nothing here knows a stage by name.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitslim import stages as stage_table
from vitslim.evaluate.data import load_eval_data, shard_eval_data
from vitslim.evaluate.device import resolve_device
from vitslim.evaluate.environment import int8_saturates
from vitslim.export.manifest import write_manifest
from vitslim.export.validate import ValidateStage
from vitslim.files import ensure_parent_dir, staged_output_dir
from vitslim.models import LoadedModel
from vitslim.pipeline.context import StageContext
from vitslim.pipeline.judge import validate_variant
from vitslim.pipeline.measure import Measured, MeasureSettings, measure_variant, report_header
from vitslim.pipeline.options import Evaluation, Timing
from vitslim.pipeline.preflight import preflight
from vitslim.pipeline.variants import FP32, Variant, build_variants
from vitslim.recipes import Recipe
from vitslim.report import write_report
from vitslim.report.schema import Report, build_report
from vitslim.runtimes import Deployed
from vitslim.runtimes.timing import time_variants

__all__ = ["compress", "fp32_report", "run_recipe", "write_compress_manifest"]

log = logging.getLogger(__name__)


def _stage_entries(variant: dict, built: Variant, out_dir: Path) -> None:
    """What the families of ``built``'s stages add to its report ``variant``."""
    onnx_path = out_dir / variant["onnx"]["file"]
    for stage, record in built.applied.items():
        summarize = stage_table.STAGES[stage].load().summarize
        if summarize is not None:
            variant.update(summarize(record, built.model, onnx_path, stage == built.stage))


def _measured(
    loaded: LoadedModel, settings: MeasureSettings, name: str, description: str, model: Any, **export: Any
) -> Measured:
    """:func:`~vitslim.pipeline.measure.measure_variant` plus what every family measures on every variant."""
    measured = measure_variant(name, description, model, loaded, settings, **export)
    for spec in stage_table.STAGES:
        family_measure = spec.load().measure
        if family_measure is not None:
            measured.variant.update(family_measure(model))
    return measured


def _measure_all(
    loaded: LoadedModel, built: list[Variant], settings: MeasureSettings, rule: ValidateStage
) -> tuple[list[dict], list[str]]:
    """The report variants (fp32, then ``built``) with their stages' entries, validated and timed
    side by side; and the validation failures."""
    graphs: dict[str, Any] = {}  # traced float graphs, by variant: a weight-only stage's export reuses its base's
    fp32 = _measured(loaded, settings, FP32, "uncompressed model", loaded.model, graphs=graphs)
    measured, failures = [fp32], validate_variant(fp32.variant, loaded.model, fp32.outputs, settings, rule)
    for b in built:
        reuse = b.base if stage_table.STAGES[b.stage].weight_only else None
        m = _measured(
            loaded, settings, b.name, b.description, b.model, reference=fp32.outputs, graphs=graphs, reuse=reuse
        )
        _stage_entries(m.variant, b, settings.out_dir)
        failures += validate_variant(m.variant, b.model, m.outputs, settings, rule)
        measured.append(m)
    _time_all(measured, settings)
    return [m.variant for m in measured], failures


def _time_all(measured: list[Measured], settings: MeasureSettings) -> None:
    """Every variant's ``latency`` in every measured runtime, timed interleaved."""
    if not settings.runtimes:
        return
    start = time.perf_counter()
    deployed = [_as_validated(m, settings) for m in measured]
    timing = {"warmup": settings.warmup, "runs": settings.runs, "progress": settings.progress}
    latency = time_variants(deployed, settings.runtimes, settings.batch_sizes, settings.threads, **timing)
    for m in measured:
        m.variant["latency"] = [entry.to_dict() for entry in latency[m.variant["name"]]]
        for e in latency[m.variant["name"]]:
            log.info("%s: %s on %s, batch %d: p50 %.2f ms", m.variant["name"], e.runtime, e.device, e.batch, e.p50_ms)
    log.info("latency of %d variants timed interleaved (%.1f s)", len(measured), time.perf_counter() - start)


def _as_validated(measured: Measured, settings: MeasureSettings) -> Deployed:
    """``measured``'s files as they are after validation (a failed one renamed ``*.failed.*``)."""
    variant, out = measured.variant, settings.out_dir
    artifacts = {r: out / variant[r]["file"] for r in settings.runtimes if "file" in variant.get(r, {})}
    return dataclasses.replace(measured.deployed, onnx=out / variant["onnx"]["file"], artifacts=artifacts)


def _notes(variants: list[dict]) -> list[str]:
    """The families' notes, then which ONNX files reuse a traced graph."""
    notes = []
    for spec in stage_table.STAGES:
        hook = spec.load().notes
        notes += [] if hook is None else hook(variants)
    return notes + [
        f"{v['name']}: {v['onnx']['file']} is the ONNX graph traced for {v['onnx']['graph_of']} with "
        f"{v['name']}'s weights (its stage changes weights only)."
        for v in variants
        if v["onnx"].get("graph_of")
    ]


def run_recipe(
    loaded: LoadedModel,
    recipe: Recipe,
    settings: MeasureSettings,
    ctx: StageContext,
    command: str = "",
    *,
    alone: Sequence[str] = (),
    target: str | None = None,
    dropped: dict[str, str] | None = None,
) -> Report:
    """Measure ``fp32`` and then one variant per cumulative stage of ``recipe`` (fidelity against
    fp32; first the stages named in ``alone`` applied alone), validating every export; return
    the report. The stages are applied before anything is measured, so a recipe that does not
    fit the model fails fast. ``target`` and the stages ``dropped`` for it are said in the report."""
    built = build_variants(loaded.model, recipe, ctx, alone=alone)
    variants, failures = _measure_all(loaded, built, settings, _validation_rule(recipe))
    notes = _notes(variants) + failures
    finished: dict[str, Any] = {}
    for spec in stage_table.STAGES:
        finish = spec.load().finish
        if finish is not None and spec.name in recipe.stages:
            entries, more = finish(recipe.stages[spec.name], variants, settings.out_dir, settings.batch_sizes)
            finished.update(entries)
            notes += more
    target_record = None
    if target is not None:
        target_record = {"name": target, "dropped_stages": dropped or {}}
        notes += [f"Target {target}: stage {stage} dropped: {why}." for stage, why in (dropped or {}).items()]
    return build_report(
        **report_header(loaded, settings),
        variants=variants,
        command=command,
        recipe=recipe.to_dict(),
        notes=notes,
        validation_failures=failures,
        target=target_record,
        **finished,
    )


def _validation_rule(recipe: Recipe | None) -> ValidateStage:
    """The rule every exported file is judged by: the stage table's validating family's, from the
    recipe's config of its stage (its default when the recipe has none)."""
    for spec in stage_table.STAGES:
        rule = spec.load().rule
        if rule is not None:
            return rule(None if recipe is None else recipe.stages.get(spec.name))
    return ValidateStage()


def fp32_report(loaded: LoadedModel, settings: MeasureSettings, command: str = "") -> Report:
    """The uncompressed model measured as variant ``fp32`` (validated, timed): the report."""
    variants, failures = _measure_all(loaded, [], settings, _validation_rule(None))
    return build_report(
        **report_header(loaded, settings), variants=variants, command=command, validation_failures=failures
    )


def write_compress_manifest(out_dir: Path, report: dict) -> Path:
    """``manifest.json``: every artifact with its sha256, the recipe, each variant's export
    (format, opset, per-site precision, validation) and the library versions."""
    artifacts = sorted(p for p in out_dir.iterdir() if p.suffix in (".onnx", ".xml", ".bin", ".engine", ".sh"))
    variants = {
        v["name"]: {**v["onnx"], **({"openvino": v["openvino"]} if "openvino" in v else {})} for v in report["variants"]
    }
    return write_manifest(out_dir, artifacts, recipe=report["recipe"], extra={"variants": variants})


def compress(
    loaded: LoadedModel,
    recipe: Recipe,
    out: str | Path,
    *,
    evaluation: Evaluation | None = None,
    timing: Timing | None = None,
    device: str = "cpu",
    alone: Sequence[str] = (),
    target: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    notes: Sequence[str] = (),
    files: Mapping[str, bytes] | None = None,
) -> dict:
    """Run ``recipe`` on ``loaded`` and write report.json, report.md, report.html, manifest.json and
    one ONNX model per variant into ``out`` (``model_<variant>.failed.onnx`` when it failed the
    ``validate`` stage; the report's ``validation_failures`` says why). The folder appears only
    when the run finished; an existing non-empty ``out`` is refused unless ``overwrite``.
    ``evaluation``: the data every variant is evaluated and calibrated on; ``timing``: how latency
    is measured (:mod:`vitslim.pipeline.options`; None: the defaults). ``device`` (``cpu``, ``cuda[:N]``, ``auto``) is
    where PyTorch calibrates, evaluates and is timed (``loaded.model`` is moved there); ONNX
    Runtime uses its CUDA provider there when installed. ``alone``: stages (after the recipe's
    first) also applied alone to the uncompressed model and measured (variants
    ``<stage>-alone``, after fp32). ``target`` (``cpu``, ``gpu``): drop the recipe's stages that
    cannot pay there (:meth:`Recipe.for_target`), said in the report. ``notes``: added to the
    report's; ``files``: more files to write into ``out`` (relative path: content), e.g. what
    chose the recipe. Returns the report dict."""
    torch_device = resolve_device(device)
    dropped: dict[str, str] = {}
    if target is not None:
        recipe, dropped = recipe.for_target(target)
    ev, timing = evaluation or Evaluation(), timing or Timing()
    with staged_output_dir(out, overwrite=overwrite) as staging:
        eval_data = load_eval_data(loaded, ev.data, ev.limit, ev.seed, ev.batch_size)
        if ev.executor is not None:
            shard_eval_data(eval_data, ev.executor, ev.workers or ev.executor.capacity(), ev.executor.cpus)
        log.info(
            "%s, recipe %s on %s: %d images of %s",
            loaded.name,
            recipe.name,
            torch_device,
            eval_data.samples,
            eval_data.name,
        )
        log.info("stages: %s", "; ".join(f"{name} ({cfg.describe()})" for name, cfg in recipe.stages.items()))
        loaded.model.to(torch_device)
        settings = MeasureSettings(
            data=eval_data,
            out_dir=staging,
            threads=timing.threads,
            batch_sizes=list(timing.batch_sizes),
            progress=progress,
            warmup=timing.warmup,
            runs=timing.runs,
            device=torch_device,
            runtimes=tuple(timing.runtimes),
            output=ev.output,
        )
        # a GPU target runs TensorRT, whose int8 kernels do not saturate: this CPU's do not matter
        saturates = target != "gpu" and int8_saturates()
        ctx = StageContext(
            loaded, calib=ev.calib, seed=ev.seed, progress=progress, batch_size=ev.batch_size, int8_saturates=saturates
        )
        preflight(loaded, recipe, next(iter(eval_data.batches))[0], eval_data.name, ctx)
        report = run_recipe(loaded, recipe, settings, ctx, command, alone=alone, target=target, dropped=dropped)
        report["notes"] = [*notes, *report["notes"]]
        for name, content in (files or {}).items():
            ensure_parent_dir(staging / name).write_bytes(content)
        write_report(staging, report)
        write_compress_manifest(staging, report)
    return report
