"""Exporters: FP32 and quantized (explicit Q/DQ) ONNX run by ONNX Runtime, OpenVINO IR, TensorRT
engines, validation against PyTorch and a manifest of the artifacts."""

from .manifest import write_manifest
from .onnx_export import DEFAULT_OPSET, export_onnx
from .qdq import QuantExport, SiteExport, export_quantized_onnx
from .tensorrt import TensorRTUnavailable, build_tensorrt_engine, trtexec_command, write_trtexec_script
from .validate import ExportValidationError, Parity, Validation, check_parity, validate_onnx

__all__ = [
    "DEFAULT_OPSET",
    "Parity",
    "check_parity",
    "export_onnx",
    "QuantExport",
    "SiteExport",
    "export_quantized_onnx",
    "Validation",
    "ExportValidationError",
    "validate_onnx",
    "TensorRTUnavailable",
    "build_tensorrt_engine",
    "trtexec_command",
    "write_trtexec_script",
    "write_manifest",
]
