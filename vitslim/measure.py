"""Measuring a model end to end: accuracy, fidelity, ONNX export parity and latency."""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from torch.utils.data import DataLoader

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.compress.quant import is_quantized
from vitslim.config import check_choice
from vitslim.errors import UserError
from vitslim.evaluate.accuracy import Outputs, collect_outputs, fidelity, ort_runner, score, topk_accuracy, torch_runner
from vitslim.evaluate.device import describe_device, module_device, ort_providers
from vitslim.evaluate.environment import environment
from vitslim.evaluate.features import feature_fidelity
from vitslim.evaluate.latency import (
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    Latency,
    bench_ort,
    bench_torch,
    resolve_threads,
    torch_threads,
)
from vitslim.evaluate.openvino_runtime import require_openvino
from vitslim.evaluate.sharded import OrtRunnerFactory, Sharding, TorchRunnerFactory, evaluate_sharded, shards_of
from vitslim.executors import Executor
from vitslim.export.manifest import precision_table
from vitslim.export.onnx_export import DEFAULT_OPSET, save_onnx, trace_onnx, with_weights
from vitslim.export.qdq import QDQ_OPSET, export_quantized_onnx
from vitslim.export.validate import parity_of
from vitslim.measure_openvino import measure_openvino, openvino_latency
from vitslim.models import LoadedModel
from vitslim.models.features import split_outputs, with_output
from vitslim.report.schema import build_report

log = logging.getLogger(__name__)
#: runtimes a variant can be measured in
RUNTIMES = ("pytorch", "onnxruntime", "openvino")


def resolve_runtimes(runtime: str) -> tuple[str, ...]:
    """``all``: every runtime of :data:`RUNTIMES` that is installed (OpenVINO is optional); a
    named runtime: itself, after checking it is installed."""
    if runtime == "all":
        return tuple(r for r in RUNTIMES if r != "openvino" or importlib.util.find_spec("openvino") is not None)
    check_choice("runtime", runtime, (*RUNTIMES, "all"))
    if runtime == "openvino":
        require_openvino()
    return (runtime,)


@dataclass
class EvalData:
    """A seeded sample of a dataset in a fixed order, so every variant sees the same images."""

    name: str
    batches: DataLoader
    labelled: bool
    skipped: int
    #: the preprocessing (timm data config) the batches were made with
    data_config: dict[str, Any] = field(default_factory=dict)
    #: when set, evaluations run shard by shard on an executor (:func:`shard_eval_data`)
    sharding: Sharding | None = None

    @property
    def samples(self) -> int:
        return len(self.batches.dataset)  # type: ignore[arg-type]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "samples": self.samples,
            "labelled": self.labelled,
            "skipped_unreadable": self.skipped,
        }


def load_eval_data(loaded: LoadedModel, spec: str | None, limit: int | None, seed: int, batch_size: int) -> EvalData:
    """Preprocess ``limit`` seeded images of ``spec`` (default: the model's own test data)."""
    spec = spec or loaded.default_data
    if spec is None:
        raise UserError(f"--data is required for model {loaded.name} (an image folder)")
    dataset = load_dataset(spec, transform=build_transform(loaded.data_config))
    batches = make_loader(dataset, batch_size=batch_size, limit=limit, seed=seed)
    labelled, skipped = bool(getattr(dataset, "labelled", False)), len(getattr(dataset, "skipped", []))
    return EvalData(spec, batches, labelled, skipped, dict(loaded.data_config))


def shard_eval_data(data: EvalData, executor: Executor, workers: int, task_threads: int = 1) -> EvalData:
    """``data`` evaluated from now on in up to ``workers`` shards on ``executor`` (merged exactly:
    :mod:`vitslim.evaluate.sharded`), each task with ``task_threads`` threads."""
    indices = list(data.batches.dataset.indices)  # type: ignore[attr-defined]
    shards = shards_of(data.name, data.data_config, indices, data.batches.batch_size or 1, workers)
    data.sharding = Sharding(executor, shards, task_threads)
    return data


def _scores_text(scores: dict) -> str:
    top1 = "" if scores["top1"] is None else f"top-1 {100 * scores['top1']:.2f}%, "
    if scores["agreement"] is None:  # a headless backbone: features, compared by cosine
        return f"{top1}cosine with fp32 {scores['cosine']:.4f}"
    return f"{top1}agreement with fp32 {100 * scores['agreement']:.2f}%"


def evaluate_torch(model: torch.nn.Module, data: EvalData, threads: int, progress: bool = True) -> Outputs:
    """``model``'s outputs on ``data`` (shard by shard when ``data`` is sharded; a model on a GPU
    stays here)."""
    if data.sharding is not None and module_device(model).type == "cpu":
        factory = TorchRunnerFactory(model, data.sharding.task_threads)
        return evaluate_sharded(factory, data.sharding.shards, data.sharding.executor)
    with torch_threads(resolve_threads(threads)):
        return collect_outputs(torch_runner(model), data.batches, desc="evaluate pytorch", progress=progress)


def evaluate_onnx(
    path: str | Path, data: EvalData, threads: int, progress: bool = True, providers: list | None = None
) -> Outputs:
    """ONNX Runtime's outputs of the model at ``path`` on ``data`` (shard by shard when ``data`` is
    sharded and the CPU provider runs it)."""
    if data.sharding is not None and providers in (None, ["CPUExecutionProvider"]):
        factory = OrtRunnerFactory(Path(path).read_bytes(), data.sharding.task_threads)
        return evaluate_sharded(factory, data.sharding.shards, data.sharding.executor)
    runner = ort_runner(str(path), threads=resolve_threads(threads), providers=providers)
    return collect_outputs(runner, data.batches, desc="evaluate onnxruntime", progress=progress)


def reference_parity(
    path: Path, data: EvalData, reference: Outputs, threads: int, classifier: bool, progress: bool = True
) -> dict:
    """Parity of ONNX Runtime's reference kernels (graph optimisations off: Q/DQ as float ops, no
    fused int8 kernels) on the file at ``path`` with PyTorch's ``reference`` outputs: what the graph
    itself computes, apart from the CPU's integer kernels."""
    runner = ort_runner(str(path), threads=resolve_threads(threads), optimize=False)
    outputs = collect_outputs(runner, data.batches, desc="reference kernels", progress=progress)
    parity = parity_of(reference.logits, outputs.logits, classifier)
    return {"max_abs_diff": parity["max_abs_diff"], "top1_agreement": parity["top1_agreement"]}


def evaluate_export(
    path: Path, runtime: str, data: EvalData, threads: int, progress: bool = True
) -> tuple[str, Outputs]:
    """Outputs of an exported model in ``runtime`` (``onnxruntime``; ``openvino``: an ONNX file or
    IR, in OpenVINO's default precision), and a name saying which file ran where (and how)."""
    if runtime != "openvino":
        return f"onnxruntime:{path.name}", evaluate_onnx(path, data, threads, progress)
    from vitslim.evaluate.openvino_runtime import execution_precision, ov_compile, ov_runner

    precision = execution_precision(ov_compile(path, threads, batch=1))
    outputs = collect_outputs(ov_runner(path, threads), data.batches, desc="evaluate openvino", progress=progress)
    return f"openvino:{path.name} ({precision})", outputs


def evaluate_model(
    loaded: LoadedModel,
    data: EvalData,
    threads: int,
    onnx_path: Path | None = None,
    runtime: str = "onnxruntime",
    output: str = "logits",
    progress: bool = True,
) -> list[dict]:
    """PyTorch's scores on ``data`` and, with ``onnx_path``, the exported file's against PyTorch
    in ``runtime`` (``vitslim eval``). ``output``: what both output (the file must have been
    exported with it); features add their fidelity record (:mod:`vitslim.evaluate.features`)."""
    classifier = loaded.num_classes > 0 and output == "logits"
    model = with_output(loaded.model, output, loaded.num_classes > 0)
    reference = evaluate_torch(model, data, threads, progress)
    runs = [("pytorch", reference)]
    if onnx_path is not None:
        runs.append(evaluate_export(onnx_path, runtime, data, threads, progress))
        if runs[-1][1].logits[0].numel() != reference.logits[0].numel():
            raise UserError(
                f"{onnx_path} outputs {runs[-1][1].logits[0].numel()} values per image, the model with --output "
                f"{output} {reference.logits[0].numel()}: export it with the same --output"
            )
    results = [{"name": name, **score(outputs, reference, classifier)} for name, outputs in runs]
    if output != "logits":
        layout = model.layout(loaded.input_size)
        ref = split_outputs(reference.logits, layout)
        for row, (_, outputs) in zip(results, runs, strict=True):
            row.update(feature_fidelity(ref, split_outputs(outputs.logits, layout), outputs.labels))
    return results


#: Relative input perturbation of the noise-floor check: float32 rounding level, a few ulps.
NOISE_FLOOR_INPUT = 1e-6


def noise_floor(
    model: torch.nn.Module, data: EvalData, outputs: Outputs, threads: int, progress: bool = True, seed: int = 0
) -> dict:
    """How well ``model`` agrees with its own ``outputs`` when every input is scaled by
    ``1 + NOISE_FLOOR_INPUT * N(0, 1)``: no faithful reimplementation (ONNX Runtime's different
    float rounding) can be expected to agree better with a model that amplifies such noise."""
    gen = torch.Generator().manual_seed(seed)
    run = torch_runner(model)

    def perturbed(images: torch.Tensor) -> torch.Tensor:
        return run(images * (1 + NOISE_FLOOR_INPUT * torch.randn(images.shape, generator=gen)))

    with torch_threads(resolve_threads(threads)):
        noisy = collect_outputs(perturbed, data.batches, desc="noise floor", progress=progress)
    fid = fidelity(outputs.logits, noisy.logits, classifier=True)
    return {
        "relative_input_noise": NOISE_FLOOR_INPUT,
        "agreement": fid.agreement,
        "max_abs_diff": float((outputs.logits - noisy.logits).abs().max()),
    }


def onnx_parity(reference: Outputs, onnx_outputs: Outputs, path: Path, opset: int, classifier: bool) -> dict:
    """How the exported model's outputs on real data compare with PyTorch's."""
    parity = parity_of(reference.logits, onnx_outputs.logits, classifier)
    return {
        "file": path.name,
        "opset": opset,
        "size_bytes": path.stat().st_size,
        "max_abs_diff": parity["max_abs_diff"],
        "top1_agreement": parity["top1_agreement"],
        "top1": topk_accuracy(onnx_outputs, 1) if classifier else None,
        "samples": parity["samples"],
        **({"cosine": parity["cosine"]} if "cosine" in parity else {}),
    }


def model_summary(loaded: LoadedModel) -> dict:
    return {
        "name": loaded.name,
        "source": loaded.source,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "input_size": list(loaded.input_size),
        "num_classes": loaded.num_classes,
    }


def export_variant(
    model: torch.nn.Module,
    path: Path,
    input_size: tuple[int, int, int],
    graphs: dict[str, ir.Model] | None = None,
    name: str = "",
    reuse: str | None = None,
) -> tuple[Path, int, dict]:
    """Export ``model`` to ``path``: explicit Q/DQ when it is quantized, plain FP32 otherwise.
    Returns the path, the opset and what the export says about itself. A model on a GPU is
    exported from a CPU copy. ``graphs``: the traced graphs of float exports, by variant name;
    this one's is kept under ``name``. ``reuse``: a variant in ``graphs`` that differs from this
    one by its weights only: its graph is written with this model's weights instead of tracing
    again (tracing a ViT with token merging takes 25-60 s)."""
    if module_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()
    if not is_quantized(model):
        info: dict[str, Any] = {"format": "fp32"}
        graph = None
        if graphs is not None and reuse in graphs:
            try:
                graph = with_weights(graphs[reuse], model)
                info["graph_of"] = reuse
            except ValueError as exc:
                log.info("%s: traced again, the graph of %s does not fit (%s)", name, reuse, exc)
        if graph is None:
            graph = trace_onnx(model, input_size, opset=DEFAULT_OPSET)
        if graphs is not None:
            graphs[name] = graph
        return save_onnx(graph, path), DEFAULT_OPSET, info
    export = export_quantized_onnx(model, path, input_size, opset=QDQ_OPSET)
    info = {
        "format": "qdq",
        "accelerated_sites": len(export.accelerated),
        "emulated_sites": len(export.emulated),
        "tensorrt_int8_ready": export.tensorrt_int8_ready,
        "notes": export.notes,
        "precision": precision_table(export),
    }
    return export.path, export.opset, info


@dataclass
class MeasureSettings:
    """Where and how every variant of one run is measured."""

    data: EvalData
    out_dir: Path
    threads: int
    batch_sizes: list[int]
    progress: bool = True
    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS
    #: where PyTorch runs (the models are moved there by the caller); ONNX Runtime follows it
    #: with its CUDA provider when that is installed
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: runtimes whose latency is measured ("pytorch", "onnxruntime", "openvino"); with
    #: "openvino" each variant is also converted to OpenVINO IR and evaluated in it
    runtimes: tuple[str, ...] = ("pytorch", "onnxruntime")
    #: what the models output and are exported with: ``logits`` (their own output), ``pooled``,
    #: ``patch`` or ``both`` (:mod:`vitslim.models.features`)
    output: str = "logits"

    @property
    def providers(self) -> list:
        return ort_providers(self.device)

    def describe(self) -> dict:
        return {
            "device": describe_device(self.device),
            "onnxruntime_providers": [p if isinstance(p, str) else p[0] for p in self.providers],
            "threads": resolve_threads(self.threads),
            "batch_sizes": self.batch_sizes,
            "inputs": "random normal",
            "warmup": self.warmup,
            "runs": self.runs,
            "runtimes": list(self.runtimes),
            "output": self.output,
        }

    def classifier(self, loaded: LoadedModel) -> bool:
        """Whether outputs are compared as logits (a classifier's own output), not as features."""
        return loaded.num_classes > 0 and self.output == "logits"


def measure_variant(
    name: str,
    description: str,
    model: torch.nn.Module,
    loaded: LoadedModel,
    settings: MeasureSettings,
    reference: Outputs | None = None,
    graphs: dict[str, ir.Model] | None = None,
    reuse: str | None = None,
) -> tuple[dict, Outputs]:
    """Evaluate ``model`` in PyTorch (fidelity against ``reference``, itself when None), export it
    to ``<out_dir>/model_<name>.onnx`` (``graphs`` and ``reuse``: :func:`export_variant`), check
    the export on the same data (and as OpenVINO IR when that runtime is measured) and time the
    runtimes. Returns the report variant and the PyTorch outputs (``settings.output``'s)."""
    classifier = settings.classifier(loaded)
    model = with_output(model, settings.output, loaded.num_classes > 0)
    start = time.perf_counter()
    outputs = evaluate_torch(model, settings.data, settings.threads, settings.progress)
    scores = score(outputs, reference, classifier)
    if settings.output != "logits":
        scores.update(_feature_scores(model.layout(loaded.input_size), outputs, reference))
    log.info("%s: PyTorch %s (%.1f s)", name, _scores_text(scores), time.perf_counter() - start)
    onnx_path, onnx_record = _export_checked(name, model, loaded, settings, outputs, graphs, reuse)
    extra: dict[str, Any] = {}
    if "openvino" in settings.runtimes:
        extra["openvino"] = _openvino_checked(name, onnx_path, settings, outputs, reference, classifier)
    latency = _latency(model, onnx_path, loaded.input_size, settings, baseline=reference is None)
    for entry in latency:
        log.info("%s: %s on %s, batch %d: p50 %.2f ms", name, entry.runtime, entry.device, entry.batch, entry.p50_ms)
    variant = {
        "name": name,
        "description": description,
        "evaluated_with": "pytorch",
        **scores,
        "size_bytes": onnx_path.stat().st_size,
        "onnx": onnx_record,
        **extra,
        "latency": [entry.to_dict() for entry in latency],
    }
    return variant, outputs


def _feature_scores(layout: list[tuple[str, tuple[int, ...]]], outputs: Outputs, reference: Outputs | None) -> dict:
    """The variant's ``outputs`` (name: per-image shape) and ``features`` fidelity record."""
    parts = split_outputs(outputs.logits, layout)
    ref = parts if reference is None else split_outputs(reference.logits, layout)
    shapes = {name: list(shape) for name, shape in layout}
    return {"outputs": shapes, "features": feature_fidelity(ref, parts, outputs.labels)}


def _agreement_text(agreement: float | None) -> str:
    return "n/a (headless)" if agreement is None else f"{100 * agreement:.2f}%"


def _export_checked(
    name: str,
    model: torch.nn.Module,
    loaded: LoadedModel,
    settings: MeasureSettings,
    outputs: Outputs,
    graphs: dict[str, ir.Model] | None,
    reuse: str | None,
) -> tuple[Path, dict]:
    """Export ``model`` and evaluate the file in ONNX Runtime: its path and the variant's ``onnx`` record."""
    start = time.perf_counter()
    path = settings.out_dir / f"model_{name}.onnx"
    onnx_path, opset, export_info = export_variant(model, path, loaded.input_size, graphs, name, reuse)
    size_mb = onnx_path.stat().st_size / 1e6
    log.info("%s: exported %s, %.1f MB (%.1f s)", name, onnx_path.name, size_mb, time.perf_counter() - start)
    onnx_outputs = evaluate_onnx(onnx_path, settings.data, settings.threads, settings.progress, settings.providers)
    parity = onnx_parity(outputs, onnx_outputs, onnx_path, opset, settings.classifier(loaded))
    log.info(
        "%s: ONNX Runtime vs PyTorch: agreement %s, max abs diff %.3g",
        name,
        _agreement_text(parity["top1_agreement"]),
        parity["max_abs_diff"],
    )
    return onnx_path, {**parity, **export_info}


def _openvino_checked(
    name: str, onnx_path: Path, settings: MeasureSettings, outputs: Outputs, reference: Outputs | None, classifier: bool
) -> dict:
    """The variant's ``openvino`` record (:func:`~vitslim.measure_openvino.measure_openvino`)."""
    start = time.perf_counter()
    record = measure_openvino(
        onnx_path, settings.data.batches, outputs, reference, classifier, settings.threads, settings.progress
    )
    log.info(
        "%s: OpenVINO (%s) vs PyTorch: agreement %s; %d of %d compute layers ran int8 (%.1f s)",
        name,
        record["precision"],
        _agreement_text(record["parity"]["top1_agreement"]),
        record["int8"]["int8_layers"],
        record["int8"]["compute_layers"],
        time.perf_counter() - start,
    )
    return record


def _latency(
    model: torch.nn.Module, onnx_path: Path, input_size: tuple, settings: MeasureSettings, baseline: bool
) -> list[Latency]:
    """Latency in every runtime of ``settings`` (OpenVINO: the IR beside ``onnx_path``)."""
    timing = {"warmup": settings.warmup, "runs": settings.runs, "progress": settings.progress}
    sizes, threads = settings.batch_sizes, settings.threads
    latency = []
    if "pytorch" in settings.runtimes:
        latency += bench_torch(model, input_size, sizes, threads, **timing)
    if "onnxruntime" in settings.runtimes:
        latency += bench_ort(str(onnx_path), input_size, sizes, threads, providers=settings.providers, **timing)
    if "openvino" in settings.runtimes:
        latency += openvino_latency(onnx_path.with_suffix(".xml"), input_size, sizes, threads, baseline, **timing)
    return latency


def report_header(loaded: LoadedModel, settings: MeasureSettings) -> dict:
    """The header parts of a report (:func:`~vitslim.report.schema.build_report`): the model, the
    data, the machine and how latency was measured."""
    return {
        "model": model_summary(loaded),
        "data": settings.data.describe(),
        "environment": environment(),
        "benchmark": settings.describe(),
    }


def fp32_report(loaded: LoadedModel, settings: MeasureSettings, command: str = "") -> dict:
    """Measure the uncompressed model as variant ``fp32`` and return the report dict."""
    variant, _ = measure_variant("fp32", "uncompressed model", loaded.model, loaded, settings)
    return build_report(**report_header(loaded, settings), variants=[variant], command=command)
