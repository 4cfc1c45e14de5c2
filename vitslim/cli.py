"""The ``vitslim`` command line: a thin layer over the library."""

from __future__ import annotations

import functools
import logging
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from vitslim import __version__
from vitslim.errors import UserError
from vitslim.files import atomic_write_json, ensure_parent_dir

if TYPE_CHECKING:  # torch and timm load only when a command runs: `vitslim --help` and usage errors are instant
    from vitslim.models import LoadedModel
    from vitslim.recipes import Recipe

DEFAULT_BATCH_SIZES = "1,16"
#: exit code of `compress` when an exported variant failed validation (reports are still written)
VALIDATION_FAILED = 4
#: what `vitslim demo` runs, on how many test images (5-6 minutes on a 2-core VM, README)
DEMO_RECIPE = "full"
DEMO_LIMIT = 100


class UserFacingError(click.ClickException):
    """A UserError shown as one line on stderr with exit code 2."""

    exit_code = 2


class VitslimGroup(click.Group):
    """Turns library UserErrors into clean CLI errors instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise UserFacingError(str(exc)) from None


def _parse_batch_sizes(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,16, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"batch sizes must be positive integers, got {value!r}")
    return sizes


def _parse_model_args(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    parsed = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(raw)
    return parsed


def model_options(command: Callable) -> Callable:
    """Options that choose and load a model; the command receives ``loaded: LoadedModel``."""

    @click.option(
        "--model",
        "model_name",
        required=True,
        help="'demo' (embedded default), a timm model name, or a Hugging Face model folder.",
    )
    @click.option(
        "--checkpoint",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Weights of a timm model: .safetensors, .pth/.pt/.bin (loaded with weights_only=True) or a "
        "big_vision .npz; original DINOv2/CLIP formats load as in timm.",
    )
    @click.option("--num-classes", type=click.IntRange(min=0), help="Classifier size (default: from the checkpoint).")
    @click.option("--random-init", is_flag=True, help="Random weights instead of downloading timm's pretrained ones.")
    @click.option(
        "--model-arg",
        "model_args",
        multiple=True,
        callback=_parse_model_args,
        metavar="KEY=VALUE",
        help="Extra timm.create_model argument, e.g. img_size=384 (repeatable).",
    )
    @functools.wraps(command)
    def wrapper(
        model_name: str,
        checkpoint: Path | None,
        num_classes: int | None,
        random_init: bool,
        model_args: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        from vitslim.models import load_model

        loaded = load_model(model_name, checkpoint, num_classes, pretrained=not random_init, model_args=model_args)
        return command(loaded=loaded, **kwargs)

    return wrapper


threads_option = click.option(
    "--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Intra-op threads (0: all cores)."
)


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Fail on a missing or unknown --device while parsing, before the (slow) model load."""
    from vitslim.evaluate.device import resolve_device

    resolve_device(value)
    return value


device_option = click.option(
    "--device",
    default="cpu",
    callback=_check_device,
    show_default=True,
    help="Where PyTorch calibrates, evaluates and is timed: cpu, cuda, cuda:N or auto (CUDA when present); "
    "ONNX Runtime uses its CUDA provider there when installed.",
)
batch_sizes_option = click.option(
    "--batch-sizes",
    default=DEFAULT_BATCH_SIZES,
    show_default=True,
    callback=_parse_batch_sizes,
    help="Comma-separated batch sizes to time.",
)


def timing_options(runs: int = 30, warmup: int = 3) -> Callable[[Callable], Callable]:
    """--warmup and --runs for latency measurements, with these defaults."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--runs",
            type=click.IntRange(min=1),
            default=runs,
            show_default=True,
            help="Timed runs per setting (fewer if 20 s pass first, but at least 5).",
        )(command)
        return click.option(
            "--warmup", type=click.IntRange(min=0), default=warmup, show_default=True, help="Untimed runs per setting."
        )(command)

    return decorate


def runtime_option(default: str) -> Callable[[Callable], Callable]:
    """--runtime: whose latency is measured."""
    return click.option(
        "--runtime",
        type=click.Choice(["pytorch", "onnxruntime", "openvino", "all"]),
        default=default,
        show_default=True,
        help="Runtime(s) whose latency is measured (a quantized model runs as fake quantization in PyTorch, "
        "not as it deploys); openvino also writes and evaluates each model as OpenVINO IR; all: every "
        "installed runtime.",
    )


def _runtimes(runtime: str) -> tuple[str, ...]:
    from vitslim.measure import resolve_runtimes

    return resolve_runtimes(runtime)


def _parse_stages(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def alone_option(default: str) -> Callable[[Callable], Callable]:
    """--alone STAGES: recipe stages also measured applied alone to the fp32 model."""
    return click.option(
        "--alone",
        default=default,
        show_default=True,
        callback=_parse_stages,
        help="Comma-separated recipe stages (after its first) also applied alone to the fp32 model and measured "
        "(variants <stage>-alone, listed after fp32), so their own effect shows next to the cumulative ones.",
    )


def json_option(command: Callable) -> Callable:
    return click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the result as JSON to this file.",
    )(command)


def _progress() -> bool:
    return not click.get_current_context().find_root().params.get("quiet", False)


def _emit(result: dict, json_path: Path | None) -> None:
    if json_path is not None:
        atomic_write_json(json_path, result)


def _command_line() -> str:
    return "vitslim " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


class _EchoHandler(logging.Handler):
    """Log records to the current stderr through click (which tests and pipes may replace)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _configure_logging(verbose: bool) -> None:
    """``vitslim`` log records at INFO (each step, its timing and result) with --verbose, else
    warnings only."""
    logger = logging.getLogger("vitslim")
    for handler in [h for h in logger.handlers if isinstance(h, _EchoHandler)]:
        logger.removeHandler(handler)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


@click.group(cls=VitslimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitslim")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Log each step with its timing and result (stderr).")
def cli(quiet: bool, verbose: bool) -> None:
    """Compress, export and measure Vision Transformers after training."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    _configure_logging(verbose)


def _load_recipe(ctx: click.Context, param: click.Parameter, value: str | None) -> Recipe | None:
    """Load and validate --recipe while parsing, before the (slow) model load."""
    from vitslim.recipes import load_recipe

    return None if value is None else load_recipe(value)


def recipe_option(required: bool, help_text: str) -> Callable:
    return click.option("--recipe", required=required, callback=_load_recipe, metavar="NAME|FILE.yaml", help=help_text)


@cli.command()
@model_options
@recipe_option(
    required=False,
    help_text="Also show tokens per layer and FLOPs under this recipe's token schedule, and its quantizer sites.",
)
@json_option
def info(loaded: LoadedModel, recipe: Recipe | None, json_path: Path | None) -> None:
    """Parameters, FLOPs, tokens and layers of a model."""
    from vitslim.inspect import model_info, quantization_plan

    tokens = recipe.stages.get("tokens") if recipe is not None else None
    result = model_info(loaded, tokens)
    if recipe is not None and "quant" in recipe.stages:
        result["quantization"] = quantization_plan(loaded.model, recipe.stages["quant"].config)
    for key, value in result.items():
        if key not in ("tokens_per_layer", "token_reduction", "quantization"):
            click.echo(f"{key:>16}: {value}")
    if recipe is not None:
        result["recipe"] = recipe.to_dict()
        click.echo(f"{'recipe':>16}: {recipe.name} ({recipe.description})")
    reduction = result.get("token_reduction")
    if reduction is not None:
        click.echo(f"{'tokens_per_layer':>16}: {' -> '.join(map(str, reduction['tokens_per_layer']))}")
        click.echo(
            f"{'block_flops':>16}: {reduction['block_flops']:,} reduced vs {reduction['unreduced_block_flops']:,} "
            f"unreduced ({reduction['flops_ratio']:.3f}x; attention + MLP of the blocks)"
        )
    quant = result.get("quantization")
    if quant is not None:
        click.echo(f"{'quant_sites':>16}: {quant['sites']}")
        for kind, count in quant["by_kind"].items():
            click.echo(f"{'':>16}  {count:>3} x {kind}")
    _emit(result, json_path)


def data_options(command: Callable) -> Callable:
    for decorator in reversed(
        [
            click.option(
                "--data",
                help="Image folder (class subfolders = labels) or fashion-mnist[:train|:test]; "
                "default: the demo model's Fashion-MNIST test split.",
            ),
            click.option("--limit", type=click.IntRange(min=1), help="Evaluate a seeded sample of this many images."),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample."),
            click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
            threads_option,
        ]
    ):
        command = decorator(command)
    return command


def executor_options(command: Callable) -> Callable:
    """--executor, --ray-address, --workers: where evaluations run (sharded on Ray)."""
    for decorator in reversed(
        [
            click.option(
                "--executor",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="ray: split the evaluation images over Ray workers and merge the outputs exactly.",
            ),
            click.option(
                "--ray-address", help="An existing Ray cluster (e.g. ray://head:10001); default: a local one."
            ),
            click.option(
                "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Shards (0: one per CPU)."
            ),
        ]
    ):
        command = decorator(command)
    return command


def _executor(executor: str, ray_address: str | None) -> Any:
    """The executor of --executor (None for local: evaluations stay in this process)."""
    if executor == "local" and not ray_address:
        return None
    from vitslim.executors import make_executor

    return make_executor(executor, ray_address)


@cli.command(name="eval")
@model_options
@data_options
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also evaluate this exported model (ONNX, or OpenVINO IR .xml with --runtime openvino) and compare it "
    "with PyTorch.",
)
@click.option(
    "--runtime",
    type=click.Choice(["onnxruntime", "openvino"]),
    default="onnxruntime",
    show_default=True,
    help="Runtime that evaluates --onnx (OpenVINO in its default precision: bf16 on CPUs that have it).",
)
@executor_options
@json_option
def eval_command(
    loaded: LoadedModel,
    data: str | None,
    limit: int | None,
    seed: int,
    batch_size: int,
    threads: int,
    onnx_path: Path | None,
    runtime: str,
    executor: str,
    ray_address: str | None,
    workers: int,
    json_path: Path | None,
) -> None:
    """Top-1/top-5 on labelled data; with --onnx, fidelity of the exported model against PyTorch."""
    from vitslim.measure import load_eval_data, shard_eval_data

    _runtimes(runtime)  # OpenVINO missing: fail before any work
    eval_data = load_eval_data(loaded, data, limit, seed, batch_size)
    pool = _executor(executor, ray_address)
    if pool is not None:
        shard_eval_data(eval_data, pool, workers or pool.capacity(), pool.cpus)
    try:
        results = _evaluate(loaded, eval_data, threads, onnx_path, runtime)
    finally:
        if pool is not None:
            pool.close()
    click.echo(
        f"{loaded.name} on {eval_data.name} ({eval_data.samples} images, {eval_data.skipped} unreadable skipped)"
        + ("" if pool is None else f", {len(eval_data.sharding.shards)} shards on {pool.name}")
    )
    for row in results:
        click.echo("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    _emit({"model": loaded.name, "data": eval_data.describe(), "results": results}, json_path)


def _evaluate(loaded: LoadedModel, eval_data: Any, threads: int, onnx_path: Path | None, runtime: str) -> list[dict]:
    """PyTorch's scores, and the exported model's against PyTorch when given."""
    from vitslim.evaluate.accuracy import collect_outputs, score
    from vitslim.measure import evaluate_onnx, evaluate_torch

    classifier = loaded.num_classes > 0
    reference = evaluate_torch(loaded.model, eval_data, threads, _progress())
    results = [{"name": "pytorch", **score(reference, None, classifier)}]
    if onnx_path is not None and runtime == "openvino":
        from vitslim.evaluate.openvino_runtime import execution_precision, ov_compile, ov_runner

        precision = execution_precision(ov_compile(onnx_path, threads, batch=1))
        runner = ov_runner(onnx_path, threads)
        outputs = collect_outputs(runner, eval_data.batches, desc="evaluate openvino", progress=_progress())
        results.append({"name": f"openvino:{onnx_path.name} ({precision})", **score(outputs, reference, classifier)})
    elif onnx_path is not None:
        onnx_outputs = evaluate_onnx(onnx_path, eval_data, threads, _progress())
        results.append({"name": f"onnxruntime:{onnx_path.name}", **score(onnx_outputs, reference, classifier)})
    return results


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@cli.command()
@model_options
@batch_sizes_option
@threads_option
@runtime_option("all")
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ONNX file to time (default: export the model to a temporary file).",
)
@timing_options()
@json_option
def bench(
    loaded: LoadedModel,
    batch_sizes: list[int],
    threads: int,
    runtime: str,
    onnx_path: Path | None,
    warmup: int,
    runs: int,
    json_path: Path | None,
) -> None:
    """Latency of PyTorch eager, ONNX Runtime and OpenVINO (CPU) on random inputs."""
    from vitslim.evaluate.environment import environment
    from vitslim.evaluate.latency import bench_ort, bench_torch
    from vitslim.export.onnx_export import export_onnx

    timing = {"warmup": warmup, "runs": runs}
    runtimes = _runtimes(runtime)
    results = []
    if "pytorch" in runtimes:
        results += bench_torch(loaded.model, loaded.input_size, batch_sizes, threads, progress=_progress(), **timing)
    with tempfile.TemporaryDirectory() as tmp:
        path = onnx_path
        if path is None and ("onnxruntime" in runtimes or "openvino" in runtimes):
            path = export_onnx(loaded.model, Path(tmp) / "model.onnx", loaded.input_size)
        if "onnxruntime" in runtimes:
            results += bench_ort(str(path), loaded.input_size, batch_sizes, threads, progress=_progress(), **timing)
        if "openvino" in runtimes:
            from vitslim.measure_openvino import openvino_latency

            results += openvino_latency(path, loaded.input_size, batch_sizes, threads, True, _progress(), **timing)
    env = environment()
    click.echo(f"{loaded.name} on {env['cpu']} ({env['logical_cores']} logical cores), random inputs")
    click.echo(
        f"{'runtime':>12} {'device':>11} {'batch':>5} {'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'img/s':>8}"
    )
    for r in results:
        click.echo(
            f"{r.runtime:>12} {r.device:>11} {r.batch:>5} {r.threads:>7} {r.p50_ms:9.2f} {r.p90_ms:9.2f} "
            f"{r.p99_ms:9.2f} {r.images_per_s:8.1f}"
        )
    _emit({"model": loaded.name, "environment": env, "latency": [r.to_dict() for r in results]}, json_path)


@cli.command()
@model_options
@click.option(
    "--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write."
)
@click.option("--opset", type=click.IntRange(min=17), default=18, show_default=True)
@click.option(
    "--check-samples",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Random inputs for the ONNX Runtime parity check.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "tensorrt"]),
    default="onnx",
    show_default=True,
    help="tensorrt: also build <out>.engine (needs tensorrt and a GPU; otherwise writes <out>.trtexec.sh, exit 3).",
)
@click.option("--fp16", is_flag=True, help="TensorRT: allow FP16 kernels.")
@click.option("--int8", is_flag=True, help="TensorRT: allow INT8 kernels.")
@batch_sizes_option
@json_option
def export(
    loaded: LoadedModel,
    out_path: Path,
    opset: int,
    check_samples: int,
    fmt: str,
    fp16: bool,
    int8: bool,
    batch_sizes: list[int],
    json_path: Path | None,
) -> None:
    """Export the FP32 model to ONNX and check it against PyTorch in ONNX Runtime (optionally a TensorRT engine)."""
    import torch

    from vitslim.export.onnx_export import check_parity, export_onnx
    from vitslim.export.tensorrt import TensorRTUnavailable, build_tensorrt_engine

    if out_path.suffix != ".onnx":
        raise UserError(f"--out must end in .onnx, got {out_path}")
    path = export_onnx(loaded.model, ensure_parent_dir(out_path), loaded.input_size, opset=opset)
    parity = check_parity(
        loaded.model, path, torch.randn(check_samples, *loaded.input_size, generator=torch.Generator().manual_seed(0))
    )
    result = {
        "model": loaded.name,
        "file": str(path),
        "opset": opset,
        "size_bytes": path.stat().st_size,
        "max_abs_diff": parity.max_abs_diff,
        "top1_agreement": parity.top1_agreement,
        "samples": parity.samples,
    }
    click.echo(
        f"wrote {path} ({result['size_bytes'] / 1e6:.1f} MB, opset {opset}); ONNX Runtime vs PyTorch on "
        f"{parity.samples} random inputs: max abs diff {parity.max_abs_diff:.2e}, "
        f"top-1 agreement {parity.top1_agreement:.2%}"
    )
    if fmt == "tensorrt":
        try:
            engine = build_tensorrt_engine(
                path, path.with_suffix(".engine"), fp16=fp16, int8=int8, batch_sizes=batch_sizes
            )
        except TensorRTUnavailable as exc:
            result["tensorrt"] = {"engine": None, "trtexec_script": str(exc.script), "reason": str(exc)}
            _emit(result, json_path)
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        result["tensorrt"] = {"engine": str(engine), "size_bytes": engine.stat().st_size}
        click.echo(f"wrote TensorRT engine {engine}")
    _emit(result, json_path)


@cli.command()
@click.option(
    "--out",
    "out_dir",
    default="vitslim-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for report.json, report.md, report.html, manifest.json and one ONNX model per variant.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEMO_LIMIT,
    show_default=True,
    help="Fashion-MNIST test images to evaluate (seeded sample; 10000 for all).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@batch_sizes_option
@timing_options(runs=5, warmup=1)
@device_option
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out folder.")
@alone_option(default="sparsity")
@runtime_option("onnxruntime")
@json_option
def demo(
    out_dir: Path,
    limit: int,
    seed: int,
    threads: int,
    device: str,
    batch_sizes: list[int],
    warmup: int,
    runs: int,
    overwrite: bool,
    alone: tuple[str, ...],
    runtime: str,
    json_path: Path | None,
) -> None:
    """The whole pipeline on the embedded demo model: fp32, 2:4 sparsity alone, then each cumulative
    stage of the `full` recipe (ToMe, + 2:4, + mixed-precision PTQ), exported, validated and measured."""
    from vitslim.models import load_model
    from vitslim.recipes import load_recipe

    _compress_and_report(
        load_model("demo"),
        load_recipe(DEMO_RECIPE),
        out_dir,
        json_path,
        limit=limit,
        seed=seed,
        threads=threads,
        batch_sizes=batch_sizes,
        warmup=warmup,
        runs=runs,
        overwrite=overwrite,
        device=device,
        alone=alone,
        runtimes=_runtimes(runtime),
    )


@cli.command()
@model_options
@recipe_option(
    required=True,
    help_text="Built-in recipe name (an unknown name lists them; see recipes/README.md) or a recipe .yaml file.",
)
@data_options
@click.option(
    "--calib",
    help="Calibration images for stages that need them (sparsity, quant): an image folder (labels unused) or "
    "fashion-mnist[:train|:test]; default: the demo model's Fashion-MNIST train split.",
)
@batch_sizes_option
@timing_options()
@device_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for report.json, report.md, report.html, manifest.json and one ONNX model per variant.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out folder.")
@alone_option(default="")
@runtime_option("all")
@click.option(
    "--target",
    type=click.Choice(["cpu", "gpu"]),
    help="Deployment target: drop the recipe's stages that cannot pay there (cpu: 2:4 sparsity), said in the report.",
)
@executor_options
@json_option
def compress(
    loaded: LoadedModel,
    recipe: Recipe,
    data: str | None,
    calib: str | None,
    limit: int | None,
    seed: int,
    batch_size: int,
    threads: int,
    batch_sizes: list[int],
    warmup: int,
    runs: int,
    device: str,
    out_dir: Path,
    overwrite: bool,
    alone: tuple[str, ...],
    runtime: str,
    target: str | None,
    executor: str,
    ray_address: str | None,
    workers: int,
    json_path: Path | None,
) -> None:
    """Apply a recipe's stages and measure fp32 and each cumulative stage (accuracy, fidelity, ONNX, latency)."""
    runtimes = _runtimes(runtime)
    pool = _executor(executor, ray_address)
    try:
        _compress_and_report(
            loaded,
            recipe,
            out_dir,
            json_path,
            data=data,
            calib=calib,
            limit=limit,
            seed=seed,
            eval_batch_size=batch_size,
            threads=threads,
            batch_sizes=batch_sizes,
            warmup=warmup,
            runs=runs,
            overwrite=overwrite,
            device=device,
            alone=alone,
            runtimes=runtimes,
            target=target,
            executor=pool,
            workers=workers,
        )
    finally:
        if pool is not None:
            pool.close()


def _compress_and_report(
    loaded: LoadedModel, recipe: Recipe, out_dir: Path, json_path: Path | None, **options: Any
) -> None:
    """Run the compress pipeline (progress bars unless --quiet, this command line recorded), print
    the report and what was written; exit 4 when an export failed validation."""
    from vitslim.pipeline import compress as run_compress
    from vitslim.report.markdown import render_markdown

    report = run_compress(loaded, recipe, out_dir, progress=_progress(), command=_command_line(), **options)
    click.echo(render_markdown(report))
    onnx_files = ", ".join(v["onnx"]["file"] for v in report["variants"])
    click.echo(f"wrote report.json, report.md, report.html, manifest.json and {onnx_files} into {out_dir}")
    _emit(report, json_path)
    if report["validation_failures"]:
        for failure in report["validation_failures"]:
            click.echo(f"error: {failure}", err=True)
        sys.exit(VALIDATION_FAILED)


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With several folders: also write the comparison here (.md, or .html for a web page).",
)
def report(folders: tuple[Path, ...], out_path: Path | None) -> None:
    """Regenerate report.md and report.html of a run folder from its report.json; with several
    folders, print a table comparing their variants."""
    from vitslim.files import atomic_write_text
    from vitslim.report import write_report
    from vitslim.report.compare import read_report, render_comparison

    reports = [(str(folder), read_report(folder)) for folder in folders]
    if len(reports) == 1:
        if out_path is not None:
            raise UserError("--out is for comparing several folders; one folder's reports are rewritten in place")
        write_report(folders[0], reports[0][1])
        click.echo(f"rewrote report.md and report.html in {folders[0]}")
        return
    text = render_comparison(reports)
    click.echo(text)
    if out_path is not None:
        if out_path.suffix == ".html":
            import markdown

            body = markdown.markdown(text, extensions=["tables"])
            text = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"></head><body>{body}</body></html>\n'
        atomic_write_text(out_path, text)
        click.echo(f"wrote {out_path}")


def _register_commands() -> None:
    """Commands that live in their own modules."""
    from vitslim.cli_sweep import sweep

    cli.add_command(sweep)


_register_commands()


def main() -> None:
    cli(prog_name="vitslim")


if __name__ == "__main__":
    main()
