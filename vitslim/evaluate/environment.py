"""A record of the machine and library versions a measurement was taken on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("vitslim", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "numpy")


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
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
