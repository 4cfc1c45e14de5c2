"""``vitslim sweep``: many candidates (recipes, and recipes with one key varied) compressed,
exported and validated, in this process or as Ray tasks; then all timed side by side on this
machine; one combined report with the Pareto front and the fastest candidate within a bound.

Every candidate task evaluates with the same thread count whatever the executor, so the accuracy
figures of an in-process sweep and a Ray sweep are the same. A rerun into the same folder keeps
the finished candidates and runs the missing or failed ones (the folder remembers the model, data
and candidates it was made for, and refuses another configuration).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitslim.errors import UserError
from vitslim.evaluate.environment import environment
from vitslim.evaluate.latency import resolve_threads
from vitslim.executors import make_executor
from vitslim.files import atomic_write_json, ensure_parent_dir
from vitslim.models import LoadedModel

from .candidates import Candidate, GridAxis, build_candidates, parse_grid
from .report import write_sweep_report
from .run import SweepJob, run_candidates
from .summary import summarize_sweep, time_candidates

__all__ = ["SweepSettings", "run_sweep", "build_candidates", "parse_grid", "Candidate", "GridAxis"]

CONFIG = "sweep_config.json"


@dataclass(frozen=True)
class SweepSettings:
    """How candidates are evaluated (``task_threads`` per task, whatever the executor) and timed."""

    data: str | None = None
    calib: str | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 32
    task_threads: int = 1
    runtime: str = "onnxruntime"
    threads: int = 0
    batch_sizes: tuple[int, ...] = (1, 16)
    rounds: int = 5
    executor: str = "local"
    ray_address: str | None = None
    max_drop: float | None = None


def _claim_folder(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` or check it holds a sweep of the same configuration (resume)."""
    path = out / CONFIG
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if path.is_file():
        if json.loads(path.read_text(encoding="utf-8")) != fingerprint:
            raise UserError(
                f"--out {out} holds a sweep of another model, data or candidates; "
                "choose another folder or pass --overwrite"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} already exists, is not a sweep folder and is not empty; choose another folder")
    ensure_parent_dir(path)
    atomic_write_json(path, fingerprint)


def run_sweep(
    loaded: LoadedModel,
    candidates: Sequence[Candidate],
    out: str | Path,
    settings: SweepSettings,
    *,
    overwrite: bool = False,
    command: str = "",
    progress: Callable[[str, bool], None] | None = None,
) -> dict[str, Any]:
    """Run the sweep into ``out`` (module docstring); returns what sweep.json holds."""
    out = Path(out).resolve()
    fingerprint: dict[str, Any] = {
        "model": loaded.name,
        "source": loaded.source,
        "data": [settings.data, settings.limit, settings.seed, settings.batch_size, settings.task_threads],
        "calib": settings.calib,
        "candidates": {c.name: c.recipe.to_dict()["stages"] for c in candidates},
    }
    fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from disk (tuples: lists)
    _claim_folder(out, fingerprint, overwrite)
    jobs = [
        SweepJob(
            loaded=loaded,
            candidate=c,
            data=settings.data,
            calib=settings.calib,
            limit=settings.limit,
            seed=settings.seed,
            batch_size=settings.batch_size,
            threads=settings.task_threads,
        )
        for c in candidates
    ]
    executor = make_executor(settings.executor, settings.ray_address, cpus=settings.task_threads)
    start = time.perf_counter()
    try:
        reports, failures, resumed = run_candidates(jobs, out, executor, progress)
    finally:
        executor.close()
    candidates_seconds = time.perf_counter() - start
    start = time.perf_counter()
    latency = {}
    if reports:
        latency = time_candidates(
            out, reports, settings.runtime, settings.batch_sizes, settings.threads, settings.rounds, loaded.input_size
        )
    summary = summarize_sweep(candidates, reports, failures, latency, settings.max_drop)
    first = next(iter(reports.values()), None)
    sweep = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "model": first["model"] if first else {"name": loaded.name},
        "data": first["data"] if first else {"name": settings.data, "samples": None},
        "environment": environment(),
        "settings": {
            **dataclasses.asdict(settings),
            "batch_sizes": list(settings.batch_sizes),
            "threads": resolve_threads(settings.threads),
        },
        "seconds": {"candidates": candidates_seconds, "timing": time.perf_counter() - start},
        "resumed": resumed,
        "summary": summary,
    }
    write_sweep_report(out, sweep)
    return sweep
