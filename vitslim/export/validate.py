"""The one validation path of exported models: parity with PyTorch, the judge, quarantine.

* Parity: :func:`parity_of` compares two sets of outputs of the same inputs (max abs difference,
  top-1 agreement); :func:`check_parity` runs a model and its ONNX file in ONNX Runtime on the
  same inputs (a tensor, a list of image batches or a DataLoader of ``(images, labels)``).
* The judge: :class:`ValidateStage` (a recipe's ``validate`` stage) says whether parity figures
  pass; :func:`judge` applies it to several exports of one model, measuring PyTorch's own noise
  floor (``vitslim.evaluate.parity.noise_floor``) once, only when an agreement needs it.
* Quarantine: a failed file is renamed ``<name>.failed.<suffix>`` (an OpenVINO IR with its
  ``.bin``): kept for inspection, never mistaken for a good one.

:func:`validate_onnx` is all three for one ONNX file; :func:`validate_exports` for the records of
one report variant (ONNX Runtime and OpenVINO).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vitslim.config import check_flag, check_keys
from vitslim.errors import UserError
from vitslim.stages import Family

__all__ = [
    "DEFAULT_AGREEMENT",
    "Parity",
    "parity_of",
    "check_parity",
    "Validation",
    "ExportValidationError",
    "validate_onnx",
    "failed_path",
    "quarantine",
    "ValidateStage",
    "excess_disagreement_p",
    "Verdict",
    "judge",
    "validate_exports",
    "VALIDATE",
]

log = logging.getLogger(__name__)
#: Default minimum top-1 agreement between an export and PyTorch.
DEFAULT_AGREEMENT = 0.99
#: the smallest per-image cosine with PyTorch a headless export (features) passes with
DEFAULT_COSINE = 0.99


# --------------------------------------------------------------------------- parity


@dataclass(frozen=True)
class Parity:
    """How closely an exported model reproduces PyTorch on the same inputs (agreement: NaN for
    outputs that are not class logits)."""

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    samples: int


class _Meter:
    """Running parity figures over batches of reference and exported outputs."""

    def __init__(self) -> None:
        self.worst, self.total, self.count, self.agree, self.samples, self.classifier = 0.0, 0.0, 0, 0, 0, True

    def add(self, reference: torch.Tensor, outputs: torch.Tensor, classifier: bool) -> None:
        diff = (reference.double() - outputs.double()).abs()
        self.worst = max(self.worst, float(diff.max()) if diff.numel() else 0.0)
        self.total, self.count = self.total + float(diff.sum()), self.count + diff.numel()
        self.samples += int(reference.shape[0])
        self.classifier = self.classifier and classifier
        if classifier:
            self.agree += int((reference.argmax(-1) == outputs.argmax(-1)).sum())

    def parity(self) -> Parity:
        agreement = self.agree / self.samples if self.classifier else float("nan")
        return Parity(self.worst, self.total / max(self.count, 1), agreement, self.samples)


def parity_of(reference: torch.Tensor, outputs: torch.Tensor, classifier: bool) -> dict[str, Any]:
    """Max abs difference and top-1 agreement (None unless ``classifier``) of ``outputs`` against
    ``reference`` (outputs of the same inputs), and the sample count: a report's parity record.
    Features (not ``classifier``) add the smallest per-image ``cosine`` of the two."""
    meter = _Meter()
    meter.add(reference, outputs, classifier)
    result = meter.parity()
    agreement = result.top1_agreement if classifier else None
    record = {"max_abs_diff": result.max_abs_diff, "top1_agreement": agreement, "samples": result.samples}
    if not classifier:
        cos = torch.nn.functional.cosine_similarity(reference.flatten(1).double(), outputs.flatten(1).double(), dim=1)
        record["cosine"] = float(cos.min())
    return record


def _batches(inputs: torch.Tensor | Iterable) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield inputs
        return
    for item in inputs:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(batch, torch.Tensor):
            raise UserError(f"validation inputs must be image tensors, got {type(batch).__name__}")
        yield batch


def check_parity(
    model: torch.nn.Module,
    path: str | Path,
    inputs: torch.Tensor | Iterable,
    *,
    threads: int = 0,
    optimize: bool = True,
    classifier: bool = True,
) -> Parity:
    """Run ``inputs`` through ``model`` (eval mode, CPU) and ONNX Runtime on ``path`` (every output;
    top-1 agreement only for one 2-D output of a ``classifier``). ``optimize=False``:
    ONNX Runtime runs the graph as written (Q/DQ as float ops): the export itself, apart from the
    CPU's integer kernels."""
    from vitslim.evaluate.runtimes import ort_session

    path = Path(path)
    session = ort_session(path, threads=threads, optimize=optimize)
    name = session.get_inputs()[0].name
    model, meter = model.eval(), _Meter()
    with torch.no_grad():
        for batch in _batches(inputs):
            refs = model(batch.float())
            refs = refs if isinstance(refs, (tuple, list)) else (refs,)
            outs = [torch.from_numpy(out) for out in session.run(None, {name: batch.float().numpy()})]
            shapes = [tuple(out.shape) for out in outs]
            if shapes != [tuple(ref.shape) for ref in refs]:
                raise UserError(
                    f"{path.name}: ONNX output shapes {shapes} differ from PyTorch's {[tuple(r.shape) for r in refs]}"
                )
            for ref, out in zip(refs, outs, strict=True):  # logits of a classifier, features (pooled, patch)
                meter.add(ref.float(), out, classifier=ref.ndim == 2 and len(refs) == 1 and classifier)
    if meter.samples == 0:
        raise UserError("validation needs at least one input batch")
    return meter.parity()


# --------------------------------------------------------------------------- quarantine


def failed_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.failed.onnx`` (same folder)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.failed{path.suffix or '.onnx'}")


def quarantine(path: str | Path) -> list[Path]:
    """Rename a failed export to :func:`failed_path` (an OpenVINO IR ``.xml`` with its ``.bin``);
    returns the new paths, the file's first."""
    path = Path(path)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    moved = []
    for file in files:
        os.replace(file, failed_path(file))
        moved.append(failed_path(file))
    return moved


# --------------------------------------------------------------------------- the judge


def excess_disagreement_p(agreement: float, floor: float, samples: int) -> float:
    """P-value of "the export disagrees with PyTorch no more often than PyTorch disagrees with
    itself under float noise": given ``a + b`` disagreements in all (``a`` of the export, ``b``
    of the floor, on the same ``samples`` images), the chance of ``a`` or more if each were
    equally likely to fall on either side."""
    a = round((1 - agreement) * samples)
    b = round((1 - floor) * samples)
    n = a + b
    return sum(math.comb(n, k) for k in range(a, n + 1)) / 2**n


def _fraction(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{name} must be a fraction in [0, 1], got {value!r}")


@dataclass(frozen=True)
class ValidateStage:
    """An exported variant passes when its top-1 agreement with PyTorch on the evaluation data is
    at least ``min_agreement`` and, when set, its max abs output difference is at most
    ``max_abs_diff``; a failing file is renamed ``<name>.failed.onnx``. A headless export (features,
    no top-1) is judged by the cosine of its outputs with PyTorch's: at least ``min_cosine`` on
    every image.

    ``noise_floor``: when the agreement is under ``min_agreement``, also measure how often the
    PyTorch model disagrees with itself when its inputs are perturbed at float-rounding level
    (quantized models can amplify such noise: a value on a rounding boundary moves a whole
    step). The export then fails only if its disagreements are significantly more than that
    floor's: a one-sided binomial test of equal rates at level ``significance``.
    """

    min_agreement: float = DEFAULT_AGREEMENT
    max_abs_diff: float | None = None
    min_cosine: float = DEFAULT_COSINE
    noise_floor: bool = True
    significance: float = 0.01

    def __post_init__(self) -> None:
        _fraction(self.min_agreement, "min_agreement")
        _fraction(self.significance, "significance")
        _fraction(self.min_cosine, "min_cosine")
        check_flag(self.noise_floor, "noise_floor")
        limit = self.max_abs_diff
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0
        ):
            raise UserError(f"max_abs_diff must be a positive number or null, got {limit!r}")

    def describe(self) -> str:
        """A short human description, e.g. ``top-1 agreement >= 99% (or within the noise floor)``."""
        text = f"top-1 agreement >= {self.min_agreement:.2%}"
        if self.noise_floor:
            text += " (or within the noise floor)"
        text += f" (features: cosine >= {self.min_cosine:g} on every image)"
        return text if self.max_abs_diff is None else f"{text}, max abs diff <= {self.max_abs_diff:g}"

    def needs_noise_floor(self, parity: Mapping[str, Any]) -> bool:
        """Whether judging ``parity`` needs the PyTorch noise floor (agreement under the bar)."""
        agreement = parity.get("top1_agreement")
        return self.noise_floor and agreement is not None and agreement < self.min_agreement

    def failures(self, parity: Mapping[str, Any], floor: float | None = None) -> list[str]:
        """Why an export with these parity figures fails (empty when it passes); ``floor``: the
        PyTorch model's agreement with itself under float-level input noise, when measured."""
        out = []
        agreement = parity.get("top1_agreement")
        if agreement is not None and agreement < self.min_agreement:
            if floor is None:
                out.append(f"top-1 agreement {agreement:.2%} < {self.min_agreement:.2%}")
            else:
                p = excess_disagreement_p(agreement, floor, parity["samples"])
                if p < self.significance:
                    out.append(
                        f"top-1 agreement {agreement:.2%} < {self.min_agreement:.2%}, and significantly under "
                        f"PyTorch's own noise floor {floor:.2%} (p = {p:.2g})"
                    )
        cosine = parity.get("cosine")
        if agreement is None and cosine is not None and cosine < self.min_cosine:
            out.append(f"feature cosine {cosine:.4f} < {self.min_cosine:g} on some image")
        if self.max_abs_diff is not None and parity["max_abs_diff"] > self.max_abs_diff:
            out.append(f"max abs diff {parity['max_abs_diff']:.3g} > {self.max_abs_diff:.3g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidateStage:
        return cls(**check_keys(data, [f.name for f in dataclasses.fields(cls)]))


@dataclass(frozen=True)
class Verdict:
    """Why an export failed (``reasons``; empty: it passed), and the noise floor its judgement
    used (None: not needed)."""

    reasons: list[str]
    floor: dict[str, Any] | None


def judge(
    parities: Mapping[str, Mapping[str, Any]], rule: ValidateStage, floor: Callable[[], dict]
) -> dict[str, Verdict]:
    """A :class:`Verdict` per parity record (exports of one model) by ``rule``; ``floor()`` measures
    the model's noise floor (a dict with its ``agreement``): called once, when a record needs it."""
    measured = floor() if any(rule.needs_noise_floor(p) for p in parities.values()) else None
    agreement = None if measured is None else measured["agreement"]
    return {
        name: Verdict(rule.failures(p, agreement), measured if rule.needs_noise_floor(p) else None)
        for name, p in parities.items()
    }


# --------------------------------------------------------------------------- the path


@dataclass(frozen=True)
class Validation:
    """ONNX Runtime vs PyTorch on the same inputs, and the verdict."""

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
    """Compare ONNX Runtime on ``path`` with ``model`` on ``inputs`` (:func:`check_parity`).

    Returns a :class:`Validation` when the top-1 agreement is at least ``threshold`` (and the max
    abs difference at most ``max_abs_diff`` if given); otherwise quarantines the file (unless
    ``rename_failed`` is false) and raises :class:`ExportValidationError`. Models without class
    logits (outputs not 2-D) are judged by ``max_abs_diff`` only (their agreement is NaN).
    """
    path = Path(path)
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"agreement threshold must lie in [0, 1], got {threshold}")
    parity = check_parity(model, path, inputs, threads=threads, optimize=optimize)
    agreement = None if math.isnan(parity.top1_agreement) else parity.top1_agreement  # None: no class logits
    figures = {"top1_agreement": agreement, "max_abs_diff": parity.max_abs_diff, "samples": parity.samples}
    ok = not ValidateStage(threshold, max_abs_diff, noise_floor=False).failures(figures)
    result = Validation(
        str(path),
        parity.max_abs_diff,
        parity.mean_abs_diff,
        parity.top1_agreement,
        parity.samples,
        threshold,
        max_abs_diff,
        ok,
    )
    if ok:
        return result
    target = quarantine(path)[0] if rename_failed else path
    result = dataclasses.replace(result, path=str(target))
    limit = "" if max_abs_diff is None else f", limit {max_abs_diff:.3g}"
    raise ExportValidationError(
        f"{path.name} failed validation against PyTorch on {parity.samples} inputs: top-1 agreement "
        f"{parity.top1_agreement:.2%} (threshold {threshold:.2%}), max abs diff {parity.max_abs_diff:.3g}{limit}; "
        + (f"kept as {target}" if rename_failed else "file left in place"),
        result,
        target,
    )


def validate_exports(
    variant: str,
    exports: Mapping[str, tuple[dict, Mapping[str, Any]]],
    rule: ValidateStage,
    floor: Callable[[], dict],
    out_dir: Path,
) -> dict[str, str]:
    """Judge the exports of one report variant (``runtime -> (record, parity)``: the record names
    its ``file`` in ``out_dir``, an IR also its ``weights_file``) by ``rule``, write the verdict
    into each record's ``validation`` and quarantine the failing files (the records follow).
    Returns why each failing file failed, by runtime (empty when all passed)."""
    verdicts = judge({runtime: parity for runtime, (_, parity) in exports.items()}, rule, floor)
    failures = {}
    for runtime, (record, _) in exports.items():
        verdict = verdicts[runtime]
        record["validation"] = {
            **rule.to_dict(),
            "passed": not verdict.reasons,
            "reasons": verdict.reasons,
            "noise_floor_measured": verdict.floor,
        }
        reasons = "; ".join(verdict.reasons)
        log.info("%s: %s validation %s", variant, record["file"], f"failed: {reasons}" if reasons else "passed")
        if verdict.reasons:
            moved = quarantine(out_dir / record["file"])
            record["file"] = moved[0].name
            if len(moved) > 1:
                record["weights_file"] = moved[1].name
            failures[runtime] = f"{variant}: {record['file']} failed validation against PyTorch ({reasons})"
    return failures


VALIDATE = Family(from_dict=ValidateStage.from_dict, rule=lambda stage: stage or ValidateStage())
