"""A record of the machine and library versions a measurement was taken on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("vitslim", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "numpy")
#: instruction-set flags that change which int8/bf16 kernels the CPU runtimes pick
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
#: x86 flags whose int8 dot products accumulate u8 x s8 products exactly in 32 bits
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: overrides the flags read from /proc/cpuinfo (comma- or space-separated), e.g. ``avx2`` when
#: running under ``qemu-x86_64 -cpu EPYC``, whose /proc/cpuinfo shows the host's flags
CPU_FLAGS_ENV = "VITSLIM_CPU_FLAGS"


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
    """The :data:`ISA_FLAGS` this CPU has (from /proc/cpuinfo on Linux, or ``$VITSLIM_CPU_FLAGS``;
    empty elsewhere)."""
    override = os.environ.get(CPU_FLAGS_ENV)
    if override is not None:
        present = set(override.replace(",", " ").split())
        return [flag for flag in ISA_FLAGS if flag in present]
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def int8_saturates(flags: list[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU's int8 kernels can saturate: an x86 CPU without VNNI (``flags``: default
    :func:`cpu_flags`) multiplies u8 x s8 in 16-bit pair sums (``vpmaddubsw``) that saturate
    once ``2 · 255 · |w|`` passes 32767, so 8-bit weights (|w| up to 127) can give other results
    than the Q/DQ graph describes; 7-bit weights (|w| <= 63) cannot. ONNX Runtime (MLAS) and
    OpenVINO (oneDNN) both use such kernels there. ARM's int8 dot products accumulate exactly."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not any(flag in flags for flag in VNNI_FLAGS)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict:
    """CPU (its ISA flags), cores, OS, Python, library versions, the installed runtimes, ONNX Runtime
    providers and CUDA availability."""
    import onnxruntime
    import torch

    from vitslim.runtimes import RUNTIMES

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "int8_saturates": int8_saturates(),
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "runtimes": [r.name for r in RUNTIMES if r.available()],
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
