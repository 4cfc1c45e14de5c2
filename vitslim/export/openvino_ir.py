"""OpenVINO IR (``.xml`` + ``.bin``) of an exported ONNX model.

``ov.convert_model`` reads the ONNX graph (QuantizeLinear/DequantizeLinear pairs become
FakeQuantize nodes, int8 weights stay int8) and ``ov.save_model`` writes the IR with the weights
as they are (no fp16 compression: the IR computes what the ONNX file computes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vitslim.errors import UserError
from vitslim.evaluate.openvino_runtime import require_openvino
from vitslim.files import ensure_parent_dir

__all__ = ["save_openvino_ir", "ir_files"]


def ir_files(xml: str | Path) -> tuple[Path, Path]:
    """The two files of the IR ``xml``: itself and its ``.bin``."""
    xml = Path(xml)
    return xml, xml.with_suffix(".bin")


def save_openvino_ir(onnx_path: str | Path, xml: str | Path) -> Path:
    """Convert ``onnx_path`` to OpenVINO IR at ``xml`` (and the ``.bin`` beside it). Both files are
    written under temporary names and renamed when the conversion succeeded."""
    ov = require_openvino()
    xml = ensure_parent_dir(xml)
    staging = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", dir=xml.parent))
    try:
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:  # noqa: BLE001  (OpenVINO raises its own generic errors)
            raise UserError(f"OpenVINO cannot convert {Path(onnx_path).name}: {str(exc).splitlines()[0]}") from exc
        tmp_xml = staging / xml.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        for tmp, final in zip(ir_files(tmp_xml), ir_files(xml), strict=True):
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return xml
