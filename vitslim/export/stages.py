"""The ``export`` stage of a recipe: what is built from the last variant's ONNX file besides it.

>>> ExportStage.from_dict({"tensorrt": True}).tensorrt
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitslim.config import check_flag, check_keys
from vitslim.stages import Family

from .tensorrt import engine_or_script

__all__ = ["ExportStage", "EXPORT"]


@dataclass(frozen=True)
class ExportStage:
    """Every variant is exported to ONNX (Q/DQ when quantized). ``tensorrt``: also build a TensorRT
    engine of the last variant (``fp16`` allowed; INT8 when it is quantized; sparse weights when
    2:4 was applied); without TensorRT and a GPU a ``trtexec`` script is written instead."""

    tensorrt: bool = False
    fp16: bool = True

    def __post_init__(self) -> None:
        check_flag(self.tensorrt, "tensorrt")
        check_flag(self.fp16, "fp16")

    def describe(self) -> str:
        """A short human description, e.g. ``ONNX and a TensorRT engine (fp16)``."""
        return f"ONNX and a TensorRT engine{' (fp16)' if self.fp16 else ''}" if self.tensorrt else "ONNX"

    def tensorrt_engine(
        self, variant: dict, out_dir: Path, batch_sizes: Sequence[int]
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """The report's ``tensorrt`` record of ``variant`` (the last one) and the notes about it: a
        TensorRT engine of its ONNX file (INT8 when quantized, sparse weights when its report checks
        a 2:4 pattern) or, without TensorRT and a GPU, the ``trtexec`` script that builds it and
        why; nothing when it failed validation or no engine was asked for."""
        if not self.tensorrt:
            return None, []
        if not variant["onnx"]["validation"]["passed"]:
            return None, [f"No TensorRT engine: {variant['name']} failed validation."]
        onnx_path = out_dir / variant["onnx"]["file"]
        flags = {
            "fp16": self.fp16,
            "int8": variant.get("quantization") is not None,
            "sparse_weights": variant.get("sparsity") is not None,
            "batch_sizes": batch_sizes,
        }
        built = engine_or_script(onnx_path, onnx_path.with_suffix(".engine"), **flags)
        record = {"variant": variant["name"], **built.to_dict(names=True), **flags}
        if built.engine is not None:
            return record, []
        return record, [
            f"No TensorRT engine: {built.reason}. Run {record['trtexec_script']} on a machine with TensorRT."
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportStage:
        return cls(**check_keys(data, [f.name for f in dataclasses.fields(cls)]))


def finish(
    stage: ExportStage, variants: list[dict], out_dir: Path, batch_sizes: Sequence[int]
) -> tuple[dict[str, Any], list[str]]:
    """The report's ``tensorrt`` entry (and notes) for the run's last variant."""
    record, notes = stage.tensorrt_engine(variants[-1], out_dir, batch_sizes)
    return ({} if record is None else {"tensorrt": record}), notes


EXPORT = Family(from_dict=ExportStage.from_dict, finish=finish)
