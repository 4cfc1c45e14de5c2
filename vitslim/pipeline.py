"""The compress run: apply a recipe's stages cumulatively and measure every step against fp32."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.compress.mixed import BitPlan
from vitslim.compress.quant import quant_points, quantization_info
from vitslim.compress.quant.stage import QuantStage
from vitslim.compress.sparsity import SparsityConfig, check_24, onnx_24_report, sparsify_
from vitslim.compress.tokens import TokenMergeConfig, TokenPruneConfig, apply_token_reduction, estimate_flops
from vitslim.errors import UserError
from vitslim.evaluate.accuracy import Outputs
from vitslim.evaluate.device import resolve_device
from vitslim.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP
from vitslim.executors import Executor
from vitslim.export.manifest import write_manifest
from vitslim.export.stages import ExportStage, ValidateStage
from vitslim.export.tensorrt import TensorRTUnavailable, build_tensorrt_engine
from vitslim.export.validate import failed_path
from vitslim.files import staged_output_dir
from vitslim.measure import (
    MeasureSettings,
    load_eval_data,
    measure_variant,
    new_report,
    noise_floor,
    shard_eval_data,
)
from vitslim.models import LoadedModel
from vitslim.preflight import preflight
from vitslim.recipes import Recipe
from vitslim.report import write_report

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 32
FLOPS_NOTE = (
    "block_flops_per_image counts the attention and MLP of the transformer blocks on the tokens each block "
    "sees (token reduction overhead included; patch embedding, norms and head excluded)."
)


def describe_tokens(cfg: TokenMergeConfig | TokenPruneConfig) -> str:
    """A short human description of a token-reduction config, e.g. ``ToMe r=8 constant``."""
    if isinstance(cfg, TokenPruneConfig):
        text = f"EViT keep {cfg.keep_rate:g} at layers {','.join(map(str, cfg.layers))}"
    elif cfg.keep_ratio is not None:
        text = f"ToMe keep ratio {cfg.keep_ratio:g} {cfg.schedule}"
    elif cfg.flops_ratio is not None:
        text = f"ToMe FLOPs ratio {cfg.flops_ratio:g} {cfg.schedule}"
    elif isinstance(cfg.r, tuple) or isinstance(cfg.schedule, tuple):
        r = cfg.r if isinstance(cfg.r, tuple) else cfg.schedule
        text = f"ToMe r per layer {list(r)}"
    else:
        text = f"ToMe r={cfg.r} {cfg.schedule}"
    return text + ("" if cfg.proportional_attention else ", no proportional attention")


@dataclass
class StageContext:
    """What stages need besides their config: calibration images (loaded on first use, from
    ``calib`` or the model's default calibration data), the seed and whether to show progress."""

    loaded: LoadedModel
    calib: str | None = None
    seed: int = 0
    progress: bool = True
    batch_size: int = 32
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


def _apply_tokens(model: torch.nn.Module, cfg: TokenMergeConfig | TokenPruneConfig, ctx: StageContext) -> StageResult:
    apply_token_reduction(model, cfg)
    return describe_tokens(cfg), None


def _apply_sparsity(model: torch.nn.Module, cfg: SparsityConfig, ctx: StageContext) -> StageResult:
    data = ctx.calibration(cfg.samples) if cfg.needs_data else None
    record = sparsify_(model, cfg, data, progress=ctx.progress, seed=ctx.seed)
    images = f", {record['images']} calibration images" if cfg.needs_data else ""
    return f"2:4 {cfg.method} on {len(record['layers'])} layers{images}", record


def _apply_quant(model: torch.nn.Module, stage: QuantStage, ctx: StageContext) -> StageResult:
    plan = stage.apply(model, ctx.calibration(stage.images), progress=ctx.progress, seed=ctx.seed)
    return stage.describe(), None if plan is None else mixed_precision_summary(plan)


def mixed_precision_summary(plan: BitPlan) -> dict[str, Any]:
    """What a report says about a mixed-precision plan: the bits chosen, the cost reached, the
    search's timings and the per-layer sensitivity it was based on."""
    meta = plan.meta
    sens = meta["sensitivity"]
    summary = {
        "config": meta["config"],
        "layers": {name: lb.to_dict() for name, lb in plan.layers.items()},
        "costs": meta["costs"],
        "seconds": meta["seconds"],
        "sensitivity": sens["weight"],
        "measured_bits": sens["measured_bits"],
        "metric": f"{sens['method']} of the model output vs fp32",
        "calibration": f"{sens['images']} calibration images",
        "sensitivity_cache": sens["cache"],
    }
    if "drop" in meta:
        summary["drop"] = meta["drop"]
    return summary


#: what a stage did: a description, and its record for the report (None: nothing to record)
StageResult = tuple[str, dict[str, Any] | None]
#: model stages: name -> apply its config to a model in place
STAGE_APPLIERS: dict[str, Callable[[torch.nn.Module, Any, StageContext], StageResult]] = {
    "tokens": _apply_tokens,
    "sparsity": _apply_sparsity,
    "quant": _apply_quant,
}
#: model stages that change weight values only: their variant's ONNX graph is its base's
WEIGHT_ONLY_STAGES = ("sparsity",)
#: suffix of the variants that apply one stage alone to the uncompressed model
ALONE = "-alone"
#: the uncompressed variant's name
FP32 = "fp32"


@dataclass
class Variant:
    """A compressed model to measure: ``stage`` was applied last, to the variant named ``base``;
    ``records`` holds what every stage applied to it recorded (the sparsity layers, the
    mixed-precision plan), by stage."""

    name: str
    stage: str
    base: str
    description: str
    model: torch.nn.Module
    records: dict[str, dict[str, Any]]


def _apply_stage(
    model: torch.nn.Module, stage: str, cfg: Any, ctx: StageContext, name: str, base: str, records: dict
) -> Variant:
    model = copy.deepcopy(model)
    start = time.perf_counter()
    description, record = STAGE_APPLIERS[stage](model, cfg, ctx)
    log.info("stage %s: %s (%.1f s)", name, description, time.perf_counter() - start)
    return Variant(name, stage, base, description, model, {**records, **({stage: record} if record else {})})


def build_variants(
    model: torch.nn.Module, recipe: Recipe, ctx: StageContext, *, alone: Sequence[str] = ()
) -> list[Variant]:
    """A :class:`Variant` per cumulative stage of ``recipe``, preceded by one per stage named in
    ``alone`` (a model stage of the recipe after the first) applied alone to ``model`` (named
    ``<stage>-alone``), so that stage's own effect is visible. ``model`` itself is left untouched
    (stages work on copies)."""
    stages = [(stage, cfg) for stage, cfg in recipe.stages.items() if stage in STAGE_APPLIERS]
    later = [stage for stage, _ in stages[1:]]
    for stage in alone:
        if stage not in later:
            first = bool(stages) and stage == stages[0][0]
            reason = "is the recipe's first stage (its variant shows it alone)" if first else "is not a model stage"
            raise UserError(f"--alone {stage}: {stage!r} {reason}; choose from: {', '.join(later) or 'none'}")
    variants = [_apply_stage(model, s, cfg, ctx, s + ALONE, FP32, {}) for s, cfg in stages if s in alone]
    records: dict[str, dict[str, Any]] = {}
    base = FP32
    for stage, cfg in stages:
        variants.append(_apply_stage(model, stage, cfg, ctx, stage, base, records))
        model, records, base = variants[-1].model, variants[-1].records, stage
    return variants


def quant_summary(model: torch.nn.Module) -> dict[str, Any] | None:
    """How a variant was quantized (config and calibration settings), None when it was not."""
    info = quantization_info(model)
    if info is None:
        return None
    summary = {k: info[k] for k in ("config", "search", "objective", "sequential", "seed", "images", "gptq")}
    summary["bias_correction"] = info.get("bias_correction")  # absent from models saved before it existed
    summary["sites"] = {
        name: {"kind": p.kind, "quantizer": p.quantizer.name, "bits": p.quantizer.bits}
        for name, p in quant_points(model).items()
    }
    return summary


def token_stats(model: torch.nn.Module) -> dict[str, Any]:
    """Tokens per layer and block FLOPs of ``model`` as it is now (reduced or not)."""
    flops = estimate_flops(model)
    return {"tokens_per_layer": flops["tokens_per_layer"], "block_flops_per_image": flops["total_flops"]}


def pattern_check(model: torch.nn.Module, onnx_path: Path, cfg: SparsityConfig, record: dict) -> dict[str, Any]:
    """Whether the sparsified layers still hold 2:4 in ``model`` and in its exported ONNX weights."""
    layers = list(record["layers"])
    in_model = check_24(model, layers)
    exported = onnx_24_report(onnx_path)["weights"]
    in_onnx = {name: exported[name]["pattern_24"] for name in layers if name in exported}
    return {
        "method": cfg.method,
        "layers": len(layers),
        "pattern_in_model": sum(in_model.values()),
        "pattern_in_onnx": sum(in_onnx.values()),
        "onnx_layers_found": len(in_onnx),
    }


def _sparsity_note(variant: dict) -> str:
    check = variant["sparsity"]
    return (
        f"{variant['name']}: 2:4 pattern ({check['method']}) holds in {check['pattern_in_model']} of "
        f"{check['layers']} sparsified layers in PyTorch and in {check['pattern_in_onnx']} of "
        f"{check['onnx_layers_found']} found in {variant['onnx']['file']}."
    )


def _token_note(variant: dict, fp32: dict) -> str:
    tokens = " → ".join(map(str, variant["tokens_per_layer"]))
    ratio = variant["block_flops_per_image"] / fp32["block_flops_per_image"]
    return (
        f"{variant['name']} ({variant['description']}): tokens per block {tokens}; "
        f"block FLOPs {variant['block_flops_per_image'] / 1e9:.3g} G per image, {ratio:.2f}x of fp32."
    )


def validate_export(
    variant: dict, model: torch.nn.Module, outputs: Outputs, settings: MeasureSettings, stage: ValidateStage
) -> list[str]:
    """Judge a variant's ONNX parity (ONNX Runtime) and, when measured, its OpenVINO IR's (run
    with the f32 hint) by ``stage``, measuring the PyTorch noise floor once when it is needed; a
    failing file is renamed ``<name>.failed.<suffix>`` (the variant's ``file`` entries follow).
    Returns why each file failed (empty when all passed)."""
    checks = [("onnx", variant["onnx"], variant["onnx"])]
    if "openvino" in variant:
        checks.append(("openvino", variant["openvino"], variant["openvino"]["parity_f32"]))
    floor = None
    if any(stage.needs_noise_floor(parity) for _, _, parity in checks):
        floor = noise_floor(model, settings.data, outputs, settings.threads, settings.progress)
        log.info("%s: PyTorch noise floor, agreement with itself %.2f%%", variant["name"], 100 * floor["agreement"])
    failures = []
    for runtime, record, parity in checks:
        reasons = stage.failures(parity, None if floor is None else floor["agreement"])
        measured = floor if stage.needs_noise_floor(parity) else None
        record["validation"] = {
            **stage.to_dict(),
            "passed": not reasons,
            "reasons": reasons,
            "noise_floor_measured": measured,
        }
        log.info(
            "%s: %s validation %s",
            variant["name"],
            record["file"],
            "failed: " + "; ".join(reasons) if reasons else "passed",
        )
        if reasons:
            record["file"] = _quarantine(settings.out_dir, record, runtime)
            failures.append(
                f"{variant['name']}: {record['file']} failed validation against PyTorch ({'; '.join(reasons)})"
            )
    return failures


def _quarantine(out_dir: Path, record: dict, runtime: str) -> str:
    """Rename a failed export (with an IR's weights file) to ``*.failed.*``; returns the new file name."""
    path = out_dir / record["file"]
    target = failed_path(path)
    path.replace(target)
    if runtime == "openvino":
        weights = out_dir / record["weights_file"]
        weights_target = failed_path(weights)
        weights.replace(weights_target)
        record["weights_file"] = weights_target.name
    return target.name


def build_engine(variant: dict, out_dir: Path, stage: ExportStage, sparse: bool, batch_sizes: Sequence[int]) -> dict:
    """A TensorRT engine of ``variant``'s ONNX file (INT8 when quantized, sparse weights after 2:4),
    or, without TensorRT and a GPU, the ``trtexec`` script that builds it and why."""
    onnx_path = out_dir / variant["onnx"]["file"]
    engine = onnx_path.with_suffix(".engine")
    flags = {
        "fp16": stage.fp16,
        "int8": variant.get("quantization") is not None,
        "sparse_weights": sparse,
        "batch_sizes": batch_sizes,
    }
    try:
        build_tensorrt_engine(onnx_path, engine, **flags)
    except TensorRTUnavailable as exc:
        script = exc.script.name
        return {"variant": variant["name"], "engine": None, "trtexec_script": script, "reason": str(exc), **flags}
    return {"variant": variant["name"], "engine": engine.name, "size_bytes": engine.stat().st_size, **flags}


def run_recipe(
    loaded: LoadedModel,
    recipe: Recipe,
    settings: MeasureSettings,
    ctx: StageContext,
    command: str = "",
    *,
    alone: Sequence[str] = (),
) -> dict:
    """Measure ``fp32`` and then one variant per cumulative stage of ``recipe`` (fidelity against
    fp32; first the stages named in ``alone`` applied alone), validating every export; return
    the report dict. The stages are applied before anything is measured, so a recipe that does
    not fit the model fails fast."""
    stages = build_variants(loaded.model, recipe, ctx, alone=alone)
    validate = recipe.stages.get("validate", ValidateStage())
    failures: list[str] = []
    graphs: dict[str, Any] = {}  # traced float graphs, by variant: a weight-only stage's export reuses its base's
    fp32, reference = measure_variant(FP32, "uncompressed model", loaded.model, loaded, settings, graphs=graphs)
    fp32.update(token_stats(loaded.model), quantization=None)
    failures += validate_export(fp32, loaded.model, reference, settings, validate)
    variants = [fp32]
    for built in stages:
        model = built.model
        reuse = built.base if built.stage in WEIGHT_ONLY_STAGES else None
        variant, outputs = measure_variant(
            built.name, built.description, model, loaded, settings, reference=reference, graphs=graphs, reuse=reuse
        )
        variant.update(token_stats(model))
        variant["quantization"] = quant_summary(model)
        if built.stage == "quant" and "quant" in built.records:
            variant["mixed_precision"] = built.records["quant"]
        if "sparsity" in built.records:  # this stage or an earlier one sparsified the weights: does 2:4 still hold?
            onnx_path = settings.out_dir / variant["onnx"]["file"]
            record = built.records["sparsity"]
            variant["sparsity"] = pattern_check(model, onnx_path, recipe.stages["sparsity"], record)
            if built.stage == "sparsity":
                variant["sparsity"]["per_layer"] = record["layers"]
        failures += validate_export(variant, model, outputs, settings, validate)
        variants.append(variant)
    report = new_report(loaded, settings, variants, command)
    report["recipe"] = recipe.to_dict()
    reduced = [v for v in variants[1:] if v["tokens_per_layer"] != fp32["tokens_per_layer"]]
    report["notes"] = [FLOPS_NOTE] + [_token_note(v, fp32) for v in reduced]
    report["notes"] += [_sparsity_note(v) for v in variants if v.get("sparsity")]
    report["notes"] += [
        f"{v['name']}: {v['onnx']['file']} is the ONNX graph traced for {v['onnx']['graph_of']} with "
        f"{v['name']}'s weights (its stage changes weights only)."
        for v in variants
        if v["onnx"].get("graph_of")
    ]
    report["validation_failures"] = failures
    report["notes"] += failures
    export = recipe.stages.get("export")
    if export is not None and export.tensorrt and not variants[-1]["onnx"]["validation"]["passed"]:
        report["notes"].append(f"No TensorRT engine: {variants[-1]['name']} failed validation.")
    elif export is not None and export.tensorrt:
        sparse = bool(stages) and "sparsity" in stages[-1].records
        engine = build_engine(variants[-1], settings.out_dir, export, sparse, settings.batch_sizes)
        report["tensorrt"] = engine
        if engine["engine"] is None:
            report["notes"].append(
                f"No TensorRT engine: {engine['reason']}. Run {engine['trtexec_script']} on a machine with TensorRT."
            )
    return report


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
        loaded.model.to(torch_device)
        settings = MeasureSettings(
            eval_data, staging, threads, list(batch_sizes), progress, warmup, runs, torch_device, tuple(runtimes)
        )
        ctx = StageContext(loaded, calib, seed, progress, eval_batch_size)
        preflight(loaded, recipe, next(iter(eval_data.batches))[0], eval_data.name, ctx)
        report = run_recipe(loaded, recipe, settings, ctx, command, alone=alone)
        if target is not None:
            report["target"] = {"name": target, "dropped_stages": dropped}
            report["notes"] += [f"Target {target}: stage {stage} dropped: {why}." for stage, why in dropped.items()]
        write_report(staging, report)
        write_compress_manifest(staging, report)
    return report
