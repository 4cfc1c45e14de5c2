"""The ``vitslim`` command line's shared options, output and logging (the commands: :mod:`vitslim.cli`)."""

from __future__ import annotations

import functools
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from vitslim.files import atomic_write_json
from vitslim.stages import TARGETS

if TYPE_CHECKING:  # torch and timm load only when a command runs: `vitslim --help` and usage errors are instant
    from vitslim.recipes import Recipe

DEFAULT_BATCH_SIZES = "1,16"


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


output_option = click.option(
    "--output",
    type=click.Choice(["logits", "pooled", "patch", "both"]),
    default="logits",
    show_default=True,
    help="What the model outputs and is exported with: logits (its own output), the pooled embedding, the "
    "patch-token map [B, H*W, C] (unmerged after token reduction), or both as named ONNX outputs.",
)
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


class RuntimeChoice(click.Choice):
    """``--runtime``'s choices, read from the runtime registry whenever they are needed, so a runtime
    registered after the CLI was built is offered too."""

    def __init__(self, files: bool, with_all: bool) -> None:
        self.files, self.with_all = files, with_all
        super().__init__(self.choices)

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from vitslim.runtimes import ALL, runtime_choices

        names = runtime_choices(files=self.files)
        return [*names, ALL] if self.with_all and ALL not in names else names

    @choices.setter
    def choices(self, _value: object) -> None:
        """Set by click's constructor: the registry is the source."""


def runtime_option(default: str, *, files: bool = False, with_all: bool = False) -> Callable[[Callable], Callable]:
    """--runtime, its choices read from the runtime registry (``files``: only runtimes that run an
    exported file, no ``all`` unless ``with_all``)."""
    help_all = (
        "Runtime(s) whose latency is measured (a quantized model runs as fake quantization in PyTorch, not as it "
        "deploys); openvino also writes and evaluates each model as OpenVINO IR; all: every installed runtime."
    )
    return click.option(
        "--runtime",
        type=RuntimeChoice(files, with_all),
        default=default,
        show_default=True,
        help=("Runtime(s) that run the exported files." if with_all else "Runtime that runs the exported file.")
        if files
        else help_all,
    )


def runtimes_of(runtime: str, *, files: bool = False) -> tuple[str, ...]:
    """The runtimes ``--runtime`` names (``all``: the installed ones, ``files``: of those that run
    files); a missing one is a UserError."""
    from vitslim.runtimes import RUNTIMES, resolve_runtimes

    return tuple(r for r in resolve_runtimes(runtime) if not (files and RUNTIMES[r].runs_model))


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


def executor_of(executor: str, ray_address: str | None) -> Any:
    """The executor of --executor (None for local: evaluations stay in this process)."""
    if executor == "local" and not ray_address:
        return None
    from vitslim.executors import make_executor

    return make_executor(executor, ray_address)


def json_option(command: Callable) -> Callable:
    return click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the result as JSON to this file.",
    )(command)


def show_progress() -> bool:
    return not click.get_current_context().find_root().params.get("quiet", False)


def emit(result: dict, json_path: Path | None) -> None:
    if json_path is not None:
        atomic_write_json(json_path, result)


def command_line() -> str:
    return "vitslim " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _load_recipe(ctx: click.Context, param: click.Parameter, value: str | None) -> Recipe | str | None:
    """Load and validate --recipe while parsing, before the (slow) model load (``auto`` where the
    command allows it stays the string)."""
    from vitslim.recipes import load_recipe

    if value == "auto" and "max_drop" in {p.name for p in ctx.command.params}:
        return value
    return None if value is None else load_recipe(value)


def recipe_option(required: bool, help_text: str) -> Callable:
    return click.option("--recipe", required=required, callback=_load_recipe, metavar="NAME|FILE.yaml", help=help_text)


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


calib_option = click.option(
    "--calib",
    help="Calibration images for stages that need them (sparsity, quant): an image folder (labels unused) or "
    "fashion-mnist[:train|:test]; default: the demo model's Fashion-MNIST train split.",
)

target_option = click.option(
    "--target",
    type=click.Choice(TARGETS),
    help="Deployment target: drop the recipe's stages that cannot pay there (cpu: 2:4 sparsity), said in the report.",
)


class _EchoHandler(logging.Handler):
    """Log records to the current stderr through click (which tests and pipes may replace)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def configure_logging(verbose: bool) -> None:
    """``vitslim`` log records at INFO (each step, its timing and result) with --verbose, else
    warnings only."""
    logger = logging.getLogger("vitslim")
    for handler in [h for h in logger.handlers if isinstance(h, _EchoHandler)]:
        logger.removeHandler(handler)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
