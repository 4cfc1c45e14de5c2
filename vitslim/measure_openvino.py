"""Measuring one variant in OpenVINO, the way a deployment would run it.

Its ONNX file is converted to OpenVINO IR (``model_<variant>.xml`` + ``.bin``) and that IR is
what is measured:

* ``top1``/``agreement``/``kl``... in OpenVINO's default precision (bf16 for the float parts on
  CPUs with AVX-512 BF16 or AMX): what a user of the IR gets, against the fp32 reference;
* ``parity``: the same run against this variant's own PyTorch model;
* ``parity_f32``: the IR run with the f32 precision hint against PyTorch: whether the export is
  faithful (what the ``validate`` stage judges; equal to ``parity`` where the default is f32);
* ``int8``: which compute layers OpenVINO ran with 8-bit integer inputs (its runtime graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitslim.evaluate.accuracy import Outputs, collect_outputs, score
from vitslim.evaluate.latency import Latency
from vitslim.evaluate.openvino_runtime import bench_openvino, execution_precision, int8_layers, ov_compile, ov_runner
from vitslim.export.openvino_ir import save_openvino_ir
from vitslim.export.validate import parity_of

__all__ = ["measure_openvino", "openvino_latency"]


def measure_openvino(
    onnx_path: Path,
    batches: Any,
    torch_outputs: Outputs,
    reference: Outputs | None,
    classifier: bool,
    threads: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``onnx_path`` to IR beside it and measure the IR on ``batches`` (module docstring)."""
    xml = save_openvino_ir(onnx_path, onnx_path.with_suffix(".xml"))
    compiled = ov_compile(xml, threads, batch=1)
    precision = execution_precision(compiled)
    outputs = collect_outputs(ov_runner(xml, threads), batches, desc="evaluate openvino", progress=progress)
    record: dict[str, Any] = {
        "file": xml.name,
        "weights_file": xml.with_suffix(".bin").name,
        "size_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
        "precision": precision,
        **score(outputs, reference, classifier),
        "parity": {**parity_of(torch_outputs.logits, outputs.logits, classifier), "precision": precision},
        "int8": int8_layers(compiled),
    }
    if precision == "f32":
        record["parity_f32"] = record["parity"]
    else:
        exact = collect_outputs(ov_runner(xml, threads, "f32"), batches, desc="openvino f32", progress=progress)
        record["parity_f32"] = {**parity_of(torch_outputs.logits, exact.logits, classifier), "precision": "f32"}
    return record


def openvino_latency(
    xml: Path,
    input_size: tuple[int, ...],
    batch_sizes: list[int],
    threads: int,
    baseline: bool,
    progress: bool = True,
    **timing: float,
) -> list[Latency]:
    """Latency of the IR ``xml`` in OpenVINO's default precision; ``baseline`` (the fp32 variant)
    also with the f32 hint, when the default is not f32 already."""
    latency = bench_openvino(xml, input_size, batch_sizes, threads, progress=progress, **timing)
    if baseline and not all(entry.device.endswith("(f32)") for entry in latency):
        latency += bench_openvino(xml, input_size, batch_sizes, threads, "f32", progress=progress, **timing)
    return latency
