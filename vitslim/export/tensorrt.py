"""TensorRT engines from exported ONNX files (optional: needs the ``tensorrt`` package and a GPU).

``build_tensorrt_engine(onnx, engine, fp16=..., int8=..., batch_sizes=(1, 16))`` builds a
serialized engine with the TensorRT Python API when ``tensorrt`` imports and a CUDA GPU is
present. Otherwise it writes the equivalent ``trtexec`` command next to the ONNX file
(``<name>.trtexec.sh``) and raises :class:`TensorRTUnavailable` (exit code 3 in the CLI).

A Q/DQ model (:func:`~vitslim.export.qdq.export_quantized_onnx`) is built with explicit
quantization: TensorRT takes its scales from the graph, ``int8`` only allows the INT8 kernels.
TensorRT's explicit INT8 needs signed int8 with zero point 0 (symmetric quantizers); see
:func:`~vitslim.export.tensorrt_readiness.tensorrt_readiness` (``QuantExport.tensorrt_issues``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from vitslim.errors import UserError
from vitslim.files import atomic_write_text

__all__ = [
    "TensorRTUnavailable",
    "EngineProfile",
    "tensorrt_unavailable_reason",
    "onnx_input",
    "engine_profile",
    "trtexec_command",
    "write_trtexec_script",
    "build_tensorrt_engine",
    "EngineResult",
    "engine_or_script",
]


class TensorRTUnavailable(UserError):
    """TensorRT cannot run here (not installed or no CUDA GPU); CLI exit code 3."""

    exit_code = 3

    def __init__(self, message: str, script: Path | None = None) -> None:
        super().__init__(message)
        self.script = script


@dataclass(frozen=True)
class EngineProfile:
    """The optimisation profile of the input: shapes ``(batch, C, H, W)`` at min / opt / max."""

    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    @staticmethod
    def _fmt(shape: tuple[int, ...]) -> str:
        return "x".join(str(d) for d in shape)

    def trtexec_flags(self) -> list[str]:
        return [
            f"--minShapes={self.input_name}:{self._fmt(self.min_shape)}",
            f"--optShapes={self.input_name}:{self._fmt(self.opt_shape)}",
            f"--maxShapes={self.input_name}:{self._fmt(self.max_shape)}",
        ]


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built here, or ``None`` when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "the tensorrt Python package is not installed (pip install 'vitslim[tensorrt]' on a machine "
            "with an NVIDIA GPU and driver)"
        )
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    return None


def onnx_input(onnx_path: str | Path) -> tuple[str, tuple[int, ...]]:
    """Name and per-sample shape (the dims after the batch) of the model's first input."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in inits)
    dims = graph_input.type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise UserError(f"{onnx_path}: input {graph_input.name} has dynamic non-batch dimensions; pass input_shape")
    return graph_input.name, tuple(int(d.dim_value) for d in dims)


def engine_profile(
    batch_sizes: Sequence[int],
    input_shape: Sequence[int],
    input_name: str = "input",
    opt_batch: int | None = None,
) -> EngineProfile:
    """min / opt / max batch from ``batch_sizes`` (opt: ``opt_batch``, default the largest)."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UserError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    opt = sizes[-1] if opt_batch is None else int(opt_batch)
    if not sizes[0] <= opt <= sizes[-1]:
        raise UserError(f"opt batch {opt} lies outside the batch sizes {sizes[0]}..{sizes[-1]}")
    shape = tuple(int(d) for d in input_shape)
    return EngineProfile(input_name, (sizes[0], *shape), (opt, *shape), (sizes[-1], *shape))


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    fp8: bool = False,
    sparse_weights: bool = False,
    batch_sizes: Sequence[int] = (1,),
    opt_batch: int | None = None,
    input_shape: Sequence[int] | None = None,
    input_name: str | None = None,
    timing_cache: str | Path | None = None,
) -> list[str]:
    """The ``trtexec`` argument list building the same engine as :func:`build_tensorrt_engine`.

    ``input_shape`` / ``input_name`` default to the ONNX file's (which must then exist).
    """
    if input_shape is None or input_name is None:
        name, shape = onnx_input(onnx_path)
        input_shape = shape if input_shape is None else input_shape
        input_name = name if input_name is None else input_name
    profile = engine_profile(batch_sizes, input_shape, input_name, opt_batch)
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    cmd += [flag for flag, on in (("--fp16", fp16), ("--int8", int8), ("--fp8", fp8)) if on]
    if sparse_weights:
        cmd.append("--sparsity=enable")
    cmd += profile.trtexec_flags()
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def trtexec_script_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.trtexec.sh`` (same folder)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.trtexec.sh")


def write_trtexec_script(onnx_path: str | Path, engine_path: str | Path, **flags) -> Path:
    """Write ``<name>.trtexec.sh`` beside the ONNX file (executable) and return its path."""
    cmd = trtexec_command(onnx_path, engine_path, **flags)
    text = (
        "#!/bin/sh\n"
        "# Build a TensorRT engine from this ONNX file (written by vitslim: TensorRT was not available).\n"
        "# Needs TensorRT's trtexec and an NVIDIA GPU.\n"
        f'{shlex.join(cmd)} "$@"\n'
    )
    path = atomic_write_text(trtexec_script_path(onnx_path), text)
    path.chmod(0o755)
    return path


def build_tensorrt_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    fp8: bool = False,
    sparse_weights: bool = False,
    batch_sizes: Sequence[int] = (1,),
    opt_batch: int | None = None,
    input_shape: Sequence[int] | None = None,
    timing_cache: str | Path | None = None,
    workspace_mib: int | None = None,
) -> Path:
    """Build and serialize a TensorRT engine for ``onnx_path`` into ``engine_path``.

    Flags map to builder flags (``FP16``, ``INT8``, ``FP8``, ``SPARSE_WEIGHTS``); ``batch_sizes``
    give one optimisation profile (min / opt / max batch); ``timing_cache`` is read if it exists and
    written back after the build. Without TensorRT or a GPU: writes ``<name>.trtexec.sh`` and raises
    :class:`TensorRTUnavailable`.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise UserError(f"no ONNX file at {onnx_path}")
    name, shape = onnx_input(onnx_path)
    shape = tuple(input_shape) if input_shape is not None else shape
    flags = dict(
        fp16=fp16,
        int8=int8,
        fp8=fp8,
        sparse_weights=sparse_weights,
        batch_sizes=batch_sizes,
        opt_batch=opt_batch,
        input_shape=shape,
        input_name=name,
        timing_cache=timing_cache,
    )
    profile = engine_profile(batch_sizes, shape, name, opt_batch)  # bad batch sizes fail before anything
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        script = write_trtexec_script(onnx_path, engine_path, **flags)
        raise TensorRTUnavailable(
            f"cannot build a TensorRT engine: {reason}. The equivalent trtexec command is in {script}", script
        )
    return _build(onnx_path, engine_path, profile, fp16, int8, fp8, sparse_weights, timing_cache, workspace_mib)


@dataclass(frozen=True)
class EngineResult:
    """A built ``engine``, or the ``trtexec`` ``script`` written instead and the ``reason``."""

    engine: Path | None
    script: Path | None = None
    reason: str | None = None

    def to_dict(self, *, names: bool) -> dict[str, Any]:
        """The record of a report (``names``: file names, else paths)."""
        show = (lambda path: path.name) if names else str
        if self.engine is None:
            return {"engine": None, "trtexec_script": show(self.script), "reason": self.reason}
        return {"engine": show(self.engine), "size_bytes": self.engine.stat().st_size}


def engine_or_script(onnx_path: str | Path, engine_path: str | Path, **flags: Any) -> EngineResult:
    """:func:`build_tensorrt_engine`, with the ``trtexec`` script and the reason instead of an
    error when TensorRT cannot run here."""
    try:
        return EngineResult(build_tensorrt_engine(onnx_path, engine_path, **flags))
    except TensorRTUnavailable as exc:
        return EngineResult(None, exc.script, str(exc))


def _build(onnx_path, engine_path, profile, fp16, int8, fp8, sparse_weights, timing_cache, workspace_mib) -> Path:
    # Not exercised by the test suite: TensorRT cannot be installed on the project's machines.
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for wanted, flag in ((fp16, "FP16"), (int8, "INT8"), (fp8, "FP8"), (sparse_weights, "SPARSE_WEIGHTS")):
        if wanted:
            if not hasattr(trt.BuilderFlag, flag):
                raise UserError(f"this TensorRT ({trt.__version__}) has no {flag} builder flag")
            config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(profile.input_name, profile.min_shape, profile.opt_shape, profile.max_shape)
    config.add_optimization_profile(opt_profile)
    cache_path = None if timing_cache is None else Path(timing_cache)
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine for {onnx_path} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path
