"""Running a sweep: every candidate compressed, exported and validated as one task (in this process
or on Ray), then every finished candidate timed side by side on this machine, then one report.

Each task is ``vitslim compress`` without timing, into a folder of the worker's own; its files come
back as bytes, so a remote cluster needs no shared disk, and land in ``<out>/<candidate>/``. A
failed task leaves ``<out>/<candidate>.error.json``; a rerun into the same folder skips the
candidates that have a ``report.json`` and retries the others.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitslim.errors import UserError
from vitslim.executors import Executor
from vitslim.files import atomic_write_json, staged_output_dir
from vitslim.models import LoadedModel
from vitslim.report.compare import read_report

from .candidates import Candidate

__all__ = ["SweepJob", "compress_candidate", "run_candidates", "ERROR_SUFFIX"]

ERROR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class SweepJob:
    """What one worker needs: the model, the candidate and how to evaluate it."""

    loaded: LoadedModel
    candidate: Candidate
    data: str | None
    calib: str | None
    limit: int | None
    seed: int
    batch_size: int
    threads: int


def compress_candidate(job: SweepJob) -> dict[str, bytes]:
    """Worker side: ``vitslim compress`` of one candidate (no timing) in a temporary folder; returns
    every file it wrote, by name."""
    from vitslim.pipeline import Evaluation, Timing, compress

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / job.candidate.name
        compress(
            job.loaded,
            job.candidate.recipe,
            out,
            evaluation=Evaluation(
                data=job.data, calib=job.calib, limit=job.limit, seed=job.seed, batch_size=job.batch_size
            ),
            timing=Timing(runtimes=(), threads=job.threads),
            progress=False,
            command=f"vitslim sweep: candidate {job.candidate.name}",
        )
        return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


def _land(out: Path, name: str, files: dict[str, bytes]) -> None:
    """Write a finished candidate's files into ``out/name`` (whole or not at all)."""
    with staged_output_dir(out / name, overwrite=True) as staging:
        for file_name, content in files.items():
            (staging / file_name).write_bytes(content)
    (out / f"{name}{ERROR_SUFFIX}").unlink(missing_ok=True)


def _record_failure(out: Path, name: str, error: BaseException, seconds: float) -> dict[str, Any]:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    record = {
        "candidate": name,
        "error": f"{type(error).__name__}: {text}",
        "user_error": isinstance(error, UserError),
        "traceback": "".join(traceback.format_exception(error))[-4000:],
        "seconds": seconds,
    }
    atomic_write_json(out / f"{name}{ERROR_SUFFIX}", record)
    return record


def run_candidates(
    jobs: Sequence[SweepJob], out: Path, executor: Executor, progress: Callable[[str, bool], None] | None = None
) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Run the jobs whose folder has no report.json yet; returns ``(reports, failures, resumed)``:
    reports and failures by candidate name (finished earlier ones read back from disk), and the
    names of those earlier ones."""
    reports: dict[str, dict] = {}
    todo = []
    for job in jobs:
        if (out / job.candidate.name / "report.json").is_file():
            reports[job.candidate.name] = read_report(out / job.candidate.name)
        else:
            shutil.rmtree(out / job.candidate.name, ignore_errors=True)
            todo.append(job)
    resumed = list(reports)
    failures: dict[str, dict] = {}
    start = time.perf_counter()
    for job, result in executor.map(compress_candidate, todo):
        name = job.candidate.name
        if isinstance(result, BaseException):
            failures[name] = _record_failure(out, name, result, time.perf_counter() - start)
        else:
            _land(out, name, result)
            reports[name] = json.loads((out / name / "report.json").read_text(encoding="utf-8"))
        if progress is not None:
            progress(name, name in reports)
    return reports, failures, resumed
