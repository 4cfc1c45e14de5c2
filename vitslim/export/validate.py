"""Validating an exported model in ONNX Runtime against the PyTorch model it came from.

``validate_onnx(model, path, inputs)`` runs both on the same inputs (a tensor, a list of image
batches or a DataLoader of ``(images, labels)``) and reports the max abs difference and the top-1
agreement. An export whose agreement is under ``threshold`` (or whose max abs difference is over
``max_abs_diff``, when given) is renamed to ``<name>.failed.onnx`` and an
:class:`ExportValidationError` is raised: a failed artifact is kept for inspection but can never be
mistaken for a good one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitslim.errors import UserError

__all__ = ["DEFAULT_AGREEMENT", "Validation", "ExportValidationError", "validate_onnx", "failed_path"]

#: Default minimum top-1 agreement between ONNX Runtime and PyTorch.
DEFAULT_AGREEMENT = 0.99


@dataclass(frozen=True)
class Validation:
    """ONNX Runtime vs PyTorch on the same inputs."""

    path: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    samples: int
    threshold: float
    max_abs_diff_limit: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ExportValidationError(UserError):
    """An exported model disagrees with PyTorch; the file was renamed to ``<name>.failed.onnx``."""

    def __init__(self, message: str, validation: Validation, failed: Path) -> None:
        super().__init__(message)
        self.validation = validation
        self.failed_path = failed


def failed_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.failed.onnx`` (same folder)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.failed{path.suffix or '.onnx'}")


def _batches(inputs: torch.Tensor | Iterable) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield inputs
        return
    for item in inputs:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(batch, torch.Tensor):
            raise UserError(f"validation inputs must be image tensors, got {type(batch).__name__}")
        yield batch


def validate_onnx(
    model: torch.nn.Module,
    path: str | Path,
    inputs: torch.Tensor | Iterable,
    *,
    threshold: float = DEFAULT_AGREEMENT,
    max_abs_diff: float | None = None,
    threads: int = 0,
    rename_failed: bool = True,
    optimize: bool = True,
) -> Validation:
    """Compare ONNX Runtime on ``path`` with ``model`` (eval mode, CPU) on ``inputs``.

    Returns a :class:`Validation` when the top-1 agreement is at least ``threshold`` (and the max
    abs difference at most ``max_abs_diff`` if given); otherwise renames the file to
    ``<name>.failed.onnx`` (unless ``rename_failed`` is false) and raises
    :class:`ExportValidationError`. Models without class logits (outputs not 2-D) are judged by
    ``max_abs_diff`` only (their agreement is NaN). ``optimize=False``: ONNX Runtime runs the graph
    as written (Q/DQ as float ops), which checks the export itself, apart from the CPU's integer
    kernels.
    """
    from vitslim.evaluate.runtimes import ort_session

    path = Path(path)
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"agreement threshold must lie in [0, 1], got {threshold}")
    session = ort_session(path, threads=threads, optimize=optimize)
    name = session.get_inputs()[0].name
    model = model.eval()
    worst, total_abs, count, agree, samples, classifier = 0.0, 0.0, 0, 0, 0, True
    with torch.no_grad():
        for batch in _batches(inputs):
            ref = model(batch.float()).float().numpy()
            out = session.run(None, {name: batch.float().numpy()})[0]
            if out.shape != ref.shape:
                raise UserError(f"{path.name}: ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
            diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            total_abs += float(diff.sum())
            count += diff.size
            samples += int(batch.shape[0])
            if ref.ndim == 2:
                agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            else:
                classifier = False
    if samples == 0:
        raise UserError("validation needs at least one input batch")
    agreement = agree / samples if classifier else float("nan")
    ok = (not classifier or agreement >= threshold) and (max_abs_diff is None or worst <= max_abs_diff)
    result = Validation(str(path), worst, total_abs / max(count, 1), agreement, samples, threshold, max_abs_diff, ok)
    if ok:
        return result
    target = failed_path(path)
    if rename_failed:
        os.replace(path, target)
        result = Validation(**{**asdict(result), "path": str(target)})
    limit = "" if max_abs_diff is None else f", limit {max_abs_diff:.3g}"
    raise ExportValidationError(
        f"{path.name} failed validation against PyTorch on {samples} inputs: top-1 agreement "
        f"{agreement:.2%} (threshold {threshold:.2%}), max abs diff {worst:.3g}{limit}; "
        + (f"kept as {target}" if rename_failed else "file left in place"),
        result,
        target if rename_failed else path,
    )
