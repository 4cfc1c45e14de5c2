"""What a compress run is asked for, grouped by meaning: the data every variant is evaluated and
calibrated on (:class:`Evaluation`) and how latency is measured (:class:`Timing`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vitslim.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP
from vitslim.executors import Executor

__all__ = ["EVAL_BATCH_SIZE", "Evaluation", "Timing", "split_options"]

EVAL_BATCH_SIZE = 32


@dataclass(frozen=True)
class Evaluation:
    """``limit`` seeded images of ``data`` (default: the model's own test data) in batches of
    ``batch_size``; calibration images from ``calib`` (default: the model's own); every variant
    outputs and is exported with ``output`` (``logits``; ``pooled``, ``patch``, ``both``:
    :mod:`vitslim.models.features`); with an ``executor`` (e.g. Ray), evaluations run in
    ``workers`` shards on it (0: as many as it has room for), merged exactly."""

    data: str | None = None
    calib: str | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = EVAL_BATCH_SIZE
    output: str = "logits"
    executor: Executor | None = None
    workers: int = 0


@dataclass(frozen=True)
class Timing:
    """Latency in ``runtimes`` (registered names; none: not timed) at ``batch_sizes`` with
    ``threads`` (0: all cores), ``runs`` timed calls per variant and runtime after ``warmup``."""

    runtimes: tuple[str, ...] = ("pytorch", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 16)
    threads: int = 0
    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS


def split_options(options: Mapping[str, Any]) -> tuple[Evaluation, Timing, dict[str, Any]]:
    """A command's keyword ``options`` as an :class:`Evaluation`, a :class:`Timing` (each from the
    keys named like its fields) and the rest."""
    rest = dict(options)
    groups = [{f.name: rest.pop(f.name) for f in fields(cls) if f.name in rest} for cls in (Evaluation, Timing)]
    timing = groups[1]
    for key in ("runtimes", "batch_sizes"):
        if key in timing:
            timing[key] = tuple(timing[key])
    return Evaluation(**groups[0]), Timing(**timing), rest
