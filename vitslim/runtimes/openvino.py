"""OpenVINO (CPU): each variant's ONNX file converted to IR (``model_<variant>.xml`` + ``.bin``), and
that IR is what is measured:

* ``top1``/``agreement``/``kl``... in OpenVINO's default precision (bf16 for the float parts on
  CPUs with AVX-512 BF16 or AMX): what a user of the IR gets, against the fp32 reference;
* ``parity``: the same run against this variant's own PyTorch model;
* ``parity_f32``: the IR run with the f32 precision hint against PyTorch: whether the export is
  faithful (what the ``validate`` stage judges; equal to ``parity`` where the default is f32);
* ``int8``: which compute layers OpenVINO ran with 8-bit integer inputs (its runtime graph).

The baseline is also timed with the f32 hint where the default precision is not f32.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Check, Deployed, Runtime, Timed

if TYPE_CHECKING:
    from vitslim.evaluate.accuracy import Outputs
    from vitslim.evaluate.data import EvalData

__all__ = ["OpenVINO"]


class OpenVINO(Runtime):
    name = "openvino"
    title = "OpenVINO"
    deploy_rank = 10
    optional = True
    install = "pip install 'vitslim[openvino]'"

    def available(self) -> bool:
        return importlib.util.find_spec("openvino") is not None

    def require(self) -> None:
        from vitslim.evaluate.openvino_runtime import require_openvino

        require_openvino()

    def prepare(self, deployed: Deployed, check: Check) -> dict[str, Any]:
        from vitslim.evaluate.accuracy import collect_outputs, score
        from vitslim.evaluate.openvino_runtime import execution_precision, int8_layers, ov_compile, ov_runner
        from vitslim.export.openvino_ir import save_openvino_ir
        from vitslim.export.validate import parity_of

        xml = save_openvino_ir(deployed.onnx, deployed.onnx.with_suffix(".xml"))
        compiled = ov_compile(xml, check.threads, batch=1)
        precision = execution_precision(compiled)
        run = ov_runner(xml, check.threads)
        outputs = collect_outputs(run, check.batches, desc="evaluate openvino", progress=check.progress)
        record: dict[str, Any] = {
            "file": xml.name,
            "weights_file": xml.with_suffix(".bin").name,
            "size_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
            "precision": precision,
            **score(outputs, check.reference, check.classifier),
            "parity": {**parity_of(check.outputs.logits, outputs.logits, check.classifier), "precision": precision},
            "int8": int8_layers(compiled),
        }
        if precision == "f32":
            record["parity_f32"] = record["parity"]
        else:
            run = ov_runner(xml, check.threads, "f32")
            exact = collect_outputs(run, check.batches, desc="openvino f32", progress=check.progress)
            parity = parity_of(check.outputs.logits, exact.logits, check.classifier)
            record["parity_f32"] = {**parity, "precision": "f32"}
        return record

    def judged(self, record: dict[str, Any]) -> dict[str, Any]:
        return record["parity_f32"]

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        import numpy as np

        from vitslim.evaluate.openvino_runtime import execution_precision, ov_compile

        xml = deployed.artifacts.get(self.name, deployed.onnx)  # the IR prepare() wrote; OpenVINO reads ONNX too
        x = np.random.default_rng(0).standard_normal((batch, *deployed.input_size), dtype=np.float32)
        timers = {}
        for mode in ("default", "f32"):
            compiled = ov_compile(xml, threads, mode, batch=batch)
            call = functools.partial(compiled.create_infer_request().infer, {0: x})
            timers["" if mode == "default" else mode] = Timed(call, f"CPU ({execution_precision(compiled)})")
            if not deployed.baseline or timers[""].device == "CPU (f32)":
                break  # the f32 hint is timed for the baseline only, where the default is not f32 already
        return timers

    def evaluate_file(self, path: Path, data: EvalData, threads: int, progress: bool) -> tuple[str, Outputs]:
        from vitslim.evaluate.accuracy import collect_outputs
        from vitslim.evaluate.openvino_runtime import execution_precision, ov_compile, ov_runner

        precision = execution_precision(ov_compile(path, threads, batch=1))
        outputs = collect_outputs(ov_runner(path, threads), data.batches, desc="evaluate openvino", progress=progress)
        return f"openvino:{path.name} ({precision})", outputs

    def ran_in(self, variant: dict[str, Any], device: str) -> str:
        int8 = variant["openvino"]["int8"]
        layers = f", int8 in {int8['int8_layers']} of {int8['compute_layers']} layers" if int8["int8_layers"] else ""
        return f"OpenVINO {device}{layers}"
