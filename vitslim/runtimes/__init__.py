"""The runtimes a variant is measured in, by name (:class:`~vitslim.runtimes.base.Runtime`).

Register a new one with ``RUNTIMES.register(name, instance)``; ``--runtime`` choices, the run's
latency and the reports read :data:`RUNTIMES`.
"""

from __future__ import annotations

from collections.abc import Iterable

from vitslim.registry import Registry

from .base import Check, Deployed, Runtime, Timed
from .onnxruntime import OnnxRuntime
from .openvino import OpenVINO
from .pytorch import PyTorch

__all__ = [
    "RUNTIMES",
    "ALL",
    "Runtime",
    "Deployed",
    "Check",
    "Timed",
    "deployment_runtime",
    "resolve_runtimes",
    "runtime_choices",
]

#: every runtime vitslim can measure, by name
RUNTIMES: Registry[Runtime] = Registry("runtime")
for _runtime in (PyTorch(), OnnxRuntime(), OpenVINO()):
    RUNTIMES.register(_runtime.name, _runtime)

#: ``--runtime all``: every installed runtime
ALL = "all"


def runtime_choices(*, files: bool = False) -> list[str]:
    """The names ``--runtime`` accepts (``files``: only runtimes that run exported files), then ``all``."""
    names = [r.name for r in RUNTIMES if not (files and r.runs_model)]
    return names if files else [*names, ALL]


def resolve_runtimes(runtime: str) -> tuple[str, ...]:
    """``all``: every registered runtime that is installed (optional ones may be missing); a named
    runtime: itself, after checking it is installed (a UserError saying how to install it)."""
    if runtime == ALL:
        return tuple(r.name for r in RUNTIMES if not r.optional or r.available())
    RUNTIMES[runtime].require()
    return (runtime,)


def deployment_runtime(names: Iterable[str]) -> str | None:
    """The registered runtime of lowest ``deploy_rank`` among ``names``: what a deployment would run
    (None: none of them is registered)."""
    ranked = sorted((RUNTIMES[n] for n in set(names) if n in RUNTIMES), key=lambda r: r.deploy_rank)
    return ranked[0].name if ranked else None
