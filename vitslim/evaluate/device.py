"""Where PyTorch work runs (``--device``) and which ONNX Runtime providers go with it."""

from __future__ import annotations

import onnxruntime as ort
import torch

from vitslim.errors import UserError

__all__ = ["resolve_device", "ort_providers", "describe_device", "synchronize", "module_device"]


def resolve_device(name: str = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when PyTorch sees a GPU, else CPU); a
    UserError naming what is missing when the device is not there."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(f"device {name!r} is not supported (use cpu, cuda, cuda:N or auto)")
    if not torch.cuda.is_available():
        raise UserError(f"device {name!r}: PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); use cpu")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def ort_providers(device: torch.device) -> list:
    """ONNX Runtime execution providers for ``device``: the CUDA provider on that GPU when this
    onnxruntime build has it, else the CPU provider only."""
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (GPU name)``."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings on CUDA are meaningless without it); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU when it has none)."""
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device
