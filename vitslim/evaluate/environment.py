"""A record of the machine and library versions a measurement was taken on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("vitslim", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "numpy")
#: instruction-set flags that change which int8/bf16 kernels the CPU runtimes pick
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The :data:`ISA_FLAGS` this CPU has (from /proc/cpuinfo on Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict:
    """CPU, cores, OS, Python, library versions, ONNX Runtime providers and CUDA availability."""
    import onnxruntime
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
