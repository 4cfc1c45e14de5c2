"""The ``vitslim`` command line: a thin layer over the library."""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vitslim import __version__
from vitslim.cli_options import (
    alone_option,
    batch_sizes_option,
    calib_option,
    command_line,
    configure_logging,
    data_options,
    device_option,
    emit,
    executor_of,
    executor_options,
    json_option,
    model_options,
    output_option,
    recipe_option,
    runtime_option,
    runtimes_of,
    show_progress,
    target_option,
    threads_option,
    timing_options,
)
from vitslim.cli_search import search_tokens
from vitslim.cli_sweep import sweep
from vitslim.errors import UserError
from vitslim.files import ensure_parent_dir

if TYPE_CHECKING:  # torch and timm load only when a command runs: `vitslim --help` and usage errors are instant
    from vitslim.models import LoadedModel
    from vitslim.recipes import Recipe

#: exit code of `compress` when an exported variant failed validation (reports are still written)
VALIDATION_FAILED = 4
#: what `vitslim demo` runs, on how many test images (3-10 minutes on a 2-core VM: docs/benchmarks.md)
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


@click.group(cls=VitslimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitslim")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Log each step with its timing and result (stderr).")
def cli(quiet: bool, verbose: bool) -> None:
    """Compress, export and measure Vision Transformers after training."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    configure_logging(verbose)


@cli.command()
@model_options
@recipe_option(
    required=False,
    help_text="Also show tokens per layer and FLOPs under this recipe's token schedule, and its quantizer sites.",
)
@json_option
def info(loaded: LoadedModel, recipe: Recipe | None, json_path: Path | None) -> None:
    """Parameters, FLOPs, tokens and layers of a model."""
    from vitslim.inspect import info_lines, model_info, quantization_plan

    tokens = recipe.stages.get("tokens") if recipe is not None else None
    result = model_info(loaded, tokens)
    if recipe is not None and "quant" in recipe.stages:
        result["quantization"] = quantization_plan(loaded.model, recipe.stages["quant"].config)
    if recipe is not None:
        result["recipe"] = recipe.to_dict()
    for line in info_lines(result, None if recipe is None else f"{recipe.name} ({recipe.description})"):
        click.echo(line)
    emit(result, json_path)


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
@runtime_option("onnxruntime", files=True)
@output_option
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
    output: str,
    executor: str,
    ray_address: str | None,
    workers: int,
    json_path: Path | None,
) -> None:
    """Top-1/top-5 on labelled data; with --onnx, fidelity of the exported model against PyTorch."""
    from vitslim.evaluate.data import load_eval_data, shard_eval_data
    from vitslim.evaluate.model import evaluate_model

    runtimes_of(runtime)  # OpenVINO missing: fail before any work
    eval_data = load_eval_data(loaded, data, limit, seed, batch_size)
    pool = executor_of(executor, ray_address)
    if pool is not None:
        shard_eval_data(eval_data, pool, workers or pool.capacity(), pool.cpus)
    try:
        results = evaluate_model(loaded, eval_data, threads, onnx_path, runtime, output, show_progress())
    finally:
        if pool is not None:
            pool.close()
    click.echo(
        f"{loaded.name} on {eval_data.name} ({eval_data.samples} images, {eval_data.skipped} unreadable skipped)"
        + ("" if pool is None else f", {len(eval_data.sharding.shards)} shards on {pool.name}")
    )
    for row in results:
        click.echo("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    emit({"model": loaded.name, "data": eval_data.describe(), "results": results}, json_path)


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
    """Latency of PyTorch eager, ONNX Runtime and OpenVINO (CPU) on random inputs, timed interleaved."""
    import torch

    from vitslim.evaluate.environment import environment
    from vitslim.evaluate.latency import latency_table
    from vitslim.export.onnx_export import export_onnx
    from vitslim.runtimes import RUNTIMES, Deployed
    from vitslim.runtimes.timing import time_variants

    runtimes = runtimes_of(runtime)
    with tempfile.TemporaryDirectory() as tmp:
        path = onnx_path or Path(tmp) / "model.onnx"
        if onnx_path is None and not all(RUNTIMES[r].runs_model for r in runtimes):
            export_onnx(loaded.model, path, loaded.input_size)
        deployed = Deployed(loaded.name, loaded.model, path, loaded.input_size, torch.device("cpu"), baseline=True)
        timed = time_variants([deployed], runtimes, batch_sizes, threads, warmup, runs, show_progress())
    results = timed[loaded.name]
    env = environment()
    click.echo(f"{loaded.name} on {env['cpu']} ({env['logical_cores']} logical cores), random inputs")
    for line in latency_table(results):
        click.echo(line)
    emit({"model": loaded.name, "environment": env, "latency": [r.to_dict() for r in results]}, json_path)


@cli.command()
@model_options
@batch_sizes_option
@threads_option
@runtime_option("all", files=True, with_all=True)
@click.option("--runs", type=click.IntRange(min=1), default=15, show_default=True, help="Timed calls per graph.")
@json_option
def probe(
    loaded: LoadedModel, batch_sizes: list[int], threads: int, runtime: str, runs: int, json_path: Path | None
) -> None:
    """What pays on this machine, in seconds: the model's first block in float, with int8 Linears and
    with int8 q·kᵀ too (and OpenVINO's bf16 against f32), per runtime and batch size, side by side."""
    from dataclasses import asdict

    from vitslim.evaluate.environment import environment
    from vitslim.runtimes.probe import probe as run_probe
    from vitslim.runtimes.probe import probe_shape

    runtimes = runtimes_of(runtime, files=True)
    shape = probe_shape(loaded.model, loaded.input_size)
    rows = run_probe(loaded.model, loaded.input_size, runtimes, batch_sizes, threads, runs, progress=show_progress())
    env = environment()
    click.echo(f"{loaded.name} on {env['cpu']} ({env['logical_cores']} logical cores; {' '.join(env['cpu_flags'])})")
    click.echo(f"shapes: {shape.tokens} tokens x {shape.dim} (MLP {shape.hidden}), {shape.heads} heads")
    for row in rows:
        low, high = row["round_range"]
        spread = "" if low is None else f" (rounds {low:.2f}-{high:.2f}x)"
        click.echo(
            f"  {row['runtime']:>11} {row['layer']:>9} b{row['batch']:<3} {row['precision']:>5} "
            f"vs {row['against']:<18} {row['base_p50_ms']:8.3f} -> {row['p50_ms']:8.3f} ms  "
            f"{row['speedup']:.2f}x{spread}: {'pays' if row['pays'] else row['verdict']}"
        )
    emit({"model": loaded.name, "environment": env, "shape": asdict(shape), "probe": rows}, json_path)


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
@output_option
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
    output: str,
    batch_sizes: list[int],
    json_path: Path | None,
) -> None:
    """Export the FP32 model to ONNX and check it against PyTorch in ONNX Runtime, judged by the
    validate stage's default rule as compress judges its files (optionally a TensorRT engine)."""
    import torch

    from vitslim.evaluate.accuracy import collect_outputs, torch_runner
    from vitslim.evaluate.data import EvalData
    from vitslim.evaluate.parity import noise_floor
    from vitslim.export.onnx_export import export_onnx
    from vitslim.export.tensorrt import TensorRTUnavailable, engine_or_script
    from vitslim.export.validate import ValidateStage, check_parity, validate_exports
    from vitslim.models.features import with_output

    if out_path.suffix != ".onnx":
        raise UserError(f"--out must end in .onnx, got {out_path}")
    model = with_output(loaded.model, output, loaded.num_classes > 0)
    path = export_onnx(model, ensure_parent_dir(out_path), loaded.input_size, opset=opset)
    inputs = torch.randn(check_samples, *loaded.input_size, generator=torch.Generator().manual_seed(0))
    parity = check_parity(model, path, inputs, classifier=loaded.num_classes > 0 and output == "logits")
    result = {
        "model": loaded.name,
        "file": path.name,
        "opset": opset,
        "size_bytes": path.stat().st_size,
        "max_abs_diff": parity.max_abs_diff,
        "top1_agreement": None if math.isnan(parity.top1_agreement) else parity.top1_agreement,
        "samples": parity.samples,
        "outputs": getattr(model, "output_names", ["output"]),
    }
    random_data = EvalData("random normal", [(inputs, torch.full((len(inputs),), -1))], False, 0)  # type: ignore[arg-type]

    def floor() -> dict:
        reference = collect_outputs(torch_runner(model), random_data.batches, progress=False)
        return noise_floor(model, random_data, reference, 0, progress=False)

    failures = validate_exports(loaded.name, {"onnx": (result, result)}, ValidateStage(), floor, path.parent)
    result["path"] = str(path.parent / result["file"])
    click.echo(
        f"wrote {result['path']} ({result['size_bytes'] / 1e6:.1f} MB, opset {opset}); ONNX Runtime vs "
        f"PyTorch on {parity.samples} random inputs: max abs diff {parity.max_abs_diff:.2e}"
        + ("" if result["top1_agreement"] is None else f", top-1 agreement {parity.top1_agreement:.2%}")
    )
    if failures:
        emit(result, json_path)
        for failure in failures.values():
            click.echo(f"error: {failure}", err=True)
        sys.exit(VALIDATION_FAILED)
    if fmt == "tensorrt":
        built = engine_or_script(path, path.with_suffix(".engine"), fp16=fp16, int8=int8, batch_sizes=batch_sizes)
        result["tensorrt"] = built.to_dict(names=False)
        if built.engine is None:
            emit(result, json_path)
            error = click.ClickException(built.reason)
            error.exit_code = TensorRTUnavailable.exit_code
            raise error
        click.echo(f"wrote TensorRT engine {built.engine}")
    emit(result, json_path)


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
def demo(out_dir: Path, runtime: str, json_path: Path | None, **options: Any) -> None:
    """The whole pipeline on the embedded demo model: fp32, 2:4 sparsity alone, then each cumulative
    stage of the `full` recipe (ToMe, + 2:4, + mixed-precision PTQ), exported, validated and measured."""
    from vitslim.models import load_model
    from vitslim.recipes import load_recipe

    _compress_and_report(load_model("demo"), load_recipe(DEMO_RECIPE), out_dir, json_path, runtime, **options)


@cli.command()
@model_options
@recipe_option(
    required=True,
    help_text="Built-in recipe name (an unknown name lists them; see vitslim/builtin_recipes/README.md), a recipe "
    ".yaml file, or auto (with --max-drop: the fastest built-in recipe for this machine).",
)
@data_options
@calib_option
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
@target_option
@output_option
@executor_options
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0),
    help="With --recipe auto: the top-1 points (agreement for unlabelled data) the result may lose against fp32.",
)
@json_option
def compress(
    loaded: LoadedModel,
    recipe: Recipe | str,
    out_dir: Path,
    batch_size: int,
    runtime: str,
    executor: str,
    ray_address: str | None,
    workers: int,
    max_drop: float | None,
    json_path: Path | None,
    **options: Any,
) -> None:
    """Apply a recipe's stages and measure fp32 and each cumulative stage (accuracy, fidelity, ONNX, latency).
    --recipe auto --max-drop P: the fastest candidate for this machine within P points (probe, then a sweep)."""
    pool = executor_of(executor, ray_address)
    try:
        _compress_and_report(
            loaded,
            recipe,
            out_dir,
            json_path,
            runtime,
            batch_size=batch_size,
            executor=pool,
            workers=workers,
            max_drop=max_drop,
            **options,
        )
    finally:
        if pool is not None:
            pool.close()


def _compress_and_report(
    loaded: LoadedModel,
    recipe: Recipe | str,
    out_dir: Path,
    json_path: Path | None,
    runtime: str,
    max_drop: float | None = None,
    **options: Any,
) -> None:
    """Run the compress pipeline (progress bars unless --quiet, this command line recorded) with the
    command's ``options`` (``recipe`` ``auto``: chosen first, :mod:`vitslim.pipeline.auto`), print
    the report and what was written; exit 4 when an export failed validation."""
    from vitslim.pipeline import compress as run_compress
    from vitslim.pipeline import split_options
    from vitslim.report.markdown import render_markdown
    from vitslim.report.summary import slower_than_fp32

    evaluation, timing, rest = split_options({**options, "runtimes": runtimes_of(runtime)})
    if max_drop is not None and recipe != "auto":
        raise UserError("--max-drop goes with --recipe auto")
    extra: dict[str, Any] = {}
    if recipe == "auto":
        recipe, extra = _auto_recipe(loaded, evaluation, timing, max_drop, out_dir, rest.get("overwrite", False))
    report = run_compress(
        loaded,
        recipe,
        out_dir,
        evaluation=evaluation,
        timing=timing,
        progress=show_progress(),
        command=command_line(),
        **rest,
        **extra,
    )
    click.echo(render_markdown(report))
    onnx_files = ", ".join(v["onnx"]["file"] for v in report["variants"])
    click.echo(f"wrote report.json, report.md, report.html, manifest.json and {onnx_files} into {out_dir}")
    emit(report, json_path)
    for line in slower_than_fp32(report):
        click.echo(f"warning: {line}", err=True)
    if report["validation_failures"]:
        for failure in report["validation_failures"]:
            click.echo(f"error: {failure}", err=True)
        sys.exit(VALIDATION_FAILED)


def _auto_recipe(
    loaded: LoadedModel, evaluation: Any, timing: Any, max_drop: float | None, out_dir: Path, overwrite: bool
) -> tuple[Recipe, dict[str, Any]]:
    """``--recipe auto``: the chosen recipe, and what compress adds to its report and folder (the
    notes, recipe.yaml, the sweep's report under auto/)."""
    import yaml

    from vitslim.files import check_output_dir
    from vitslim.pipeline.auto import choose_recipe

    if max_drop is None:
        raise UserError("--recipe auto needs --max-drop (the top-1 points the result may lose against fp32)")
    check_output_dir(out_dir, overwrite)
    workdir = out_dir.parent / f".{out_dir.name}.auto"
    try:
        choice = choose_recipe(loaded, evaluation, timing, max_drop, workdir, show_progress())
        files = {"recipe.yaml": yaml.safe_dump(choice.recipe.to_dict(), sort_keys=False).encode()}
        files |= {f"auto/{p.name}": p.read_bytes() for p in sorted(workdir.glob("sweep.*"))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return choice.recipe, {"notes": choice.notes, "files": files}


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
    from vitslim.report.html import html_page

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
        atomic_write_text(out_path, html_page("vitslim comparison", text) if out_path.suffix == ".html" else text)
        click.echo(f"wrote {out_path}")


cli.add_command(sweep)
cli.add_command(search_tokens)


def main() -> None:
    cli(prog_name="vitslim")


if __name__ == "__main__":
    main()
