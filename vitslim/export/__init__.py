"""Exporters: ONNX (run by ONNX Runtime) and, later, TensorRT engines."""
