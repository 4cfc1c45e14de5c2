"""The compress run: apply a recipe's stages cumulatively and measure every step against fp32.

The stages are those of the stage table (:mod:`vitslim.stages`): each model stage's family applies
its config and says what the report carries about it; nothing here knows a stage by name.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitslim import stages as stage_table
from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.errors import UserError
from vitslim.evaluate.accuracy import Outputs
from vitslim.evaluate.device import resolve_device
from vitslim.evaluate.environment import int8_saturates
from vitslim.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP
from vitslim.executors import Executor
from vitslim.export.manifest import write_manifest
from vitslim.export.validate import ValidateStage, validate_exports
from vitslim.files import staged_output_dir
from vitslim.measure import (
    MeasureSettings,
    load_eval_data,
    measure_variant,
    noise_floor,
    reference_parity,
    report_header,
    shard_eval_data,
)
from vitslim.models import LoadedModel
from vitslim.preflight import preflight
from vitslim.recipes import Recipe
from vitslim.report import write_report
from vitslim.report.schema import Report, build_report
from vitslim.stages import StageRecord

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 32
#: suffix of the variants that apply one stage alone to the uncompressed model
ALONE = "-alone"
#: the uncompressed variant's name
FP32 = "fp32"


@dataclass
class StageContext:
    """What stages need besides their config (a :class:`~vitslim.stages.Calibration`): calibration
    images (loaded on first use, from ``calib`` or the model's default calibration data), the seed,
    whether to show progress and whether the deployment CPU's int8 kernels saturate (default: this
    machine's)."""

    loaded: LoadedModel
    calib: str | None = None
    seed: int = 0
    progress: bool = True
    batch_size: int = 32
    int8_saturates: bool = field(default_factory=int8_saturates)
    _cache: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def calibration(self, images: int) -> list[torch.Tensor]:
        """``images`` seeded, preprocessed calibration images as batches."""
        if images not in self._cache:
            spec = self.calib or self.loaded.default_calib
            if spec is None:
                raise UserError(f"--calib is required to calibrate model {self.loaded.name} (an image folder)")
            dataset = load_dataset(spec, transform=build_transform(self.loaded.data_config))
            loader = make_loader(dataset, batch_size=self.batch_size, limit=images, seed=self.seed)
            self._cache[images] = [batch for batch, _ in loader]
        return self._cache[images]


@dataclass
class Variant:
    """A compressed model to measure: ``stage`` was applied last, to the variant named ``base``;
    ``applied`` holds the record of every stage applied to it, by stage."""

    name: str
    stage: str
    base: str
    description: str
    model: torch.nn.Module
    applied: dict[str, StageRecord]

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """What its stages recorded for the report (the sparsity layers, the mixed-precision plan), by stage."""
        return {stage: r.report for stage, r in self.applied.items() if r.report is not None}


def _apply_stage(
    model: torch.nn.Module, stage: str, cfg: Any, ctx: StageContext, name: str, base: str, applied: dict
) -> Variant:
    model = copy.deepcopy(model)
    start = time.perf_counter()
    record = stage_table.STAGES[stage].load().apply(model, cfg, ctx)
    log.info("stage %s: %s (%.1f s)", name, record.description, time.perf_counter() - start)
    return Variant(name, stage, base, record.description, model, {**applied, stage: record})


def build_variants(
    model: torch.nn.Module, recipe: Recipe, ctx: StageContext, *, alone: Sequence[str] = ()
) -> list[Variant]:
    """A :class:`Variant` per cumulative stage of ``recipe``, preceded by one per stage named in
    ``alone`` (a model stage of the recipe after the first) applied alone to ``model`` (named
    ``<stage>-alone``), so that stage's own effect is visible. ``model`` itself is left untouched
    (stages work on copies)."""
    chain = [(stage, cfg) for stage, cfg in recipe.stages.items() if stage_table.STAGES[stage].model_stage]
    later = [stage for stage, _ in chain[1:]]
    for stage in alone:
        if stage not in later:
            first = bool(chain) and stage == chain[0][0]
            reason = "is the recipe's first stage (its variant shows it alone)" if first else "is not a model stage"
            raise UserError(f"--alone {stage}: {stage!r} {reason}; choose from: {', '.join(later) or 'none'}")
    variants = [_apply_stage(model, s, cfg, ctx, s + ALONE, FP32, {}) for s, cfg in chain if s in alone]
    applied: dict[str, StageRecord] = {}
    base = FP32
    for stage, cfg in chain:
        variants.append(_apply_stage(model, stage, cfg, ctx, stage, base, applied))
        model, applied, base = variants[-1].model, variants[-1].applied, stage
    return variants


def validate_variant(
    variant: dict, model: torch.nn.Module, outputs: Outputs, settings: MeasureSettings, rule: ValidateStage
) -> list[str]:
    """Judge a variant's ONNX parity (ONNX Runtime) and, when measured, its OpenVINO IR's (run
    with the f32 hint) by ``rule`` (:func:`~vitslim.export.validate.validate_exports`: failing
    files are quarantined). Returns why each file failed (empty when all passed)."""
    exports = {"onnx": (variant["onnx"], variant["onnx"])}
    if "openvino" in variant:
        exports["openvino"] = (variant["openvino"], variant["openvino"]["parity_f32"])

    def floor() -> dict:
        measured = noise_floor(model, settings.data, outputs, settings.threads, settings.progress)
        log.info("%s: PyTorch noise floor, agreement with itself %.2f%%", variant["name"], 100 * measured["agreement"])
        return measured

    failures = validate_exports(variant["name"], exports, rule, floor, settings.out_dir)
    onnx = variant["onnx"]
    if not onnx["validation"]["passed"] and variant.get("quantization"):
        failures = [_with_kernel_diagnosis(f, onnx, settings, outputs, rule) if f.startswith(
            f"{variant['name']}: {onnx['file']}") else f for f in failures]  # fmt: skip
    return failures


def _with_kernel_diagnosis(
    failure: str, onnx: dict, settings: MeasureSettings, outputs: Outputs, rule: ValidateStage
) -> str:
    """A failed quantized ONNX file run again with ONNX Runtime's reference kernels, recorded in its
    ``validation``: when those pass, the graph is right and this CPU's int8 kernels deviate."""
    classifier = onnx["top1_agreement"] is not None
    path = settings.out_dir / onnx["file"]
    reference = reference_parity(path, settings.data, outputs, settings.threads, classifier, settings.progress)
    exact = not rule.failures({**reference, "samples": onnx["samples"]})
    onnx["validation"]["reference_kernels"] = {**reference, "passed": exact}
    if not exact:
        return failure
    saturates = (
        "; this CPU has no VNNI: its int8 kernels saturate, which 'reduce_range' avoids" if int8_saturates() else ""
    )
    return (
        f"{failure}; with ONNX Runtime's reference kernels the file matches PyTorch (max abs diff "
        f"{reference['max_abs_diff']:.3g}): the deviation comes from this CPU's int8 kernels{saturates}"
    )


def _stage_entries(variant: dict, built: Variant, out_dir: Path) -> None:
    """What the families of ``built``'s stages add to its report ``variant``."""
    onnx_path = out_dir / variant["onnx"]["file"]
    for stage, record in built.applied.items():
        summarize = stage_table.STAGES[stage].load().summarize
        if summarize is not None:
            variant.update(summarize(record, built.model, onnx_path, stage == built.stage))


def _measured(
    loaded: LoadedModel,
    settings: MeasureSettings,
    name: str,
    description: str,
    model: torch.nn.Module,
    reference: Outputs | None,
    graphs: dict[str, Any],
    reuse: str | None = None,
) -> tuple[dict, Outputs]:
    """:func:`~vitslim.measure.measure_variant` plus what every family measures on every variant."""
    variant, outputs = measure_variant(
        name, description, model, loaded, settings, reference=reference, graphs=graphs, reuse=reuse
    )
    for spec in stage_table.STAGES:
        measure = spec.load().measure
        if measure is not None:
            variant.update(measure(model))
    return variant, outputs


def _measure_all(
    loaded: LoadedModel, built: list[Variant], settings: MeasureSettings, rule: ValidateStage
) -> tuple[list[dict], list[str]]:
    """The report variants (fp32, then ``built``) with their stages' entries, validated; and the failures."""
    graphs: dict[str, Any] = {}  # traced float graphs, by variant: a weight-only stage's export reuses its base's
    fp32, reference = _measured(loaded, settings, FP32, "uncompressed model", loaded.model, None, graphs)
    failures = validate_variant(fp32, loaded.model, reference, settings, rule)
    variants = [fp32]
    for b in built:
        reuse = b.base if stage_table.STAGES[b.stage].weight_only else None
        variant, outputs = _measured(loaded, settings, b.name, b.description, b.model, reference, graphs, reuse)
        _stage_entries(variant, b, settings.out_dir)
        failures += validate_variant(variant, b.model, outputs, settings, rule)
        variants.append(variant)
    return variants, failures


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
    variants, failures = _measure_all(loaded, built, settings, recipe.stages.get("validate", ValidateStage()))
    notes = _notes(variants) + failures
    tensorrt = None
    export = recipe.stages.get("export")
    if export is not None:
        tensorrt, engine_notes = export.tensorrt_engine(variants[-1], settings.out_dir, settings.batch_sizes)
        notes += engine_notes
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
        tensorrt=tensorrt,
        target=target_record,
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
    data: str | None = None,
    calib: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    threads: int = 0,
    batch_sizes: Sequence[int] = (1, 16),
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    device: str = "cpu",
    alone: Sequence[str] = (),
    runtimes: Sequence[str] = ("pytorch", "onnxruntime"),
    target: str | None = None,
    executor: Executor | None = None,
    workers: int = 0,
    output: str = "logits",
) -> dict:
    """Run ``recipe`` on ``loaded`` and write report.json, report.md, report.html, manifest.json and
    one ONNX model per variant into ``out`` (``model_<variant>.failed.onnx`` when it failed the
    ``validate`` stage; the report's ``validation_failures`` says why). The folder appears only
    when the run finished; an existing non-empty ``out`` is refused unless ``overwrite``. ``data``
    and ``calib`` default to the model's own evaluation and calibration data (the demo's
    Fashion-MNIST test and train splits). ``device`` (``cpu``, ``cuda[:N]``, ``auto``) is where
    PyTorch calibrates, evaluates and is timed (``loaded.model`` is moved there); ONNX Runtime
    uses its CUDA provider there when installed. ``alone``: stages (after the recipe's first) also
    applied alone to the uncompressed model and measured (variants ``<stage>-alone``, after fp32).
    ``runtimes``: whose latency is measured (``pytorch``, ``onnxruntime``, ``openvino``: the latter
    also writes and evaluates every variant as OpenVINO IR). ``target`` (``cpu``, ``gpu``): drop the
    recipe's stages that cannot pay there (:meth:`Recipe.for_target`), said in the report.
    ``executor`` (e.g. a :class:`~vitslim.executors.RayExecutor`): PyTorch and ONNX Runtime
    evaluations run in ``workers`` shards on it (0: as many as it has room for), merged exactly.
    ``output``: what every variant outputs and is exported with (``logits``: the model's own output;
    ``pooled``, ``patch``, ``both``: :mod:`vitslim.models.features`), feature fidelity measured on it.
    Returns the report dict."""
    torch_device = resolve_device(device)
    dropped: dict[str, str] = {}
    if target is not None:
        recipe, dropped = recipe.for_target(target)
    with staged_output_dir(out, overwrite=overwrite) as staging:
        eval_data = load_eval_data(loaded, data, limit, seed, eval_batch_size)
        if executor is not None:
            shard_eval_data(eval_data, executor, workers or executor.capacity(), executor.cpus)
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
            eval_data,
            staging,
            threads,
            list(batch_sizes),
            progress,
            warmup,
            runs,
            torch_device,
            tuple(runtimes),
            output,
        )
        # a GPU target runs TensorRT, whose int8 kernels do not saturate: this CPU's do not matter
        saturates = target != "gpu" and int8_saturates()
        ctx = StageContext(loaded, calib, seed, progress, eval_batch_size, int8_saturates=saturates)
        preflight(loaded, recipe, next(iter(eval_data.batches))[0], eval_data.name, ctx)
        report = run_recipe(loaded, recipe, settings, ctx, command, alone=alone, target=target, dropped=dropped)
        write_report(staging, report)
        write_compress_manifest(staging, report)
    return report
