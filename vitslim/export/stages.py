"""The ``export`` and ``validate`` stages of a recipe: what is built from each variant's ONNX
file and how strictly it must agree with PyTorch.

>>> ValidateStage.from_dict({"min_agreement": 0.995}).min_agreement
0.995
>>> ExportStage.from_dict({"tensorrt": True}).tensorrt
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vitslim.compress.quant.config import suggest
from vitslim.errors import UserError

from .validate import DEFAULT_AGREEMENT

__all__ = ["ExportStage", "ValidateStage", "excess_disagreement_p"]


def _check_keys(data: Any, cls: type, stage: str) -> None:
    if not isinstance(data, Mapping):
        raise UserError(f"the {stage} stage must be a mapping of settings, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise UserError(f"unknown key {key!r}{suggest(str(key), names)} (allowed: {', '.join(names)})")


def _flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class ExportStage:
    """Every variant is exported to ONNX (Q/DQ when quantized). ``tensorrt``: also build a TensorRT
    engine of the last variant (``fp16`` allowed; INT8 when it is quantized; sparse weights when
    2:4 was applied); without TensorRT and a GPU a ``trtexec`` script is written instead."""

    tensorrt: bool = False
    fp16: bool = True

    def __post_init__(self) -> None:
        _flag(self.tensorrt, "tensorrt")
        _flag(self.fp16, "fp16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportStage:
        _check_keys(data, cls, "export")
        return cls(**data)


def _fraction(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{name} must be a fraction in [0, 1], got {value!r}")


def excess_disagreement_p(agreement: float, floor: float, samples: int) -> float:
    """P-value of "ONNX Runtime disagrees with PyTorch no more often than PyTorch disagrees with
    itself under float noise": given ``a + b`` disagreements in all (``a`` of ONNX Runtime, ``b``
    of the floor, on the same ``samples`` images), the chance of ``a`` or more if each were
    equally likely to fall on either side."""
    a = round((1 - agreement) * samples)
    b = round((1 - floor) * samples)
    n = a + b
    return sum(math.comb(n, k) for k in range(a, n + 1)) / 2**n


@dataclass(frozen=True)
class ValidateStage:
    """An exported variant passes when its ONNX Runtime top-1 agreement with PyTorch on the
    evaluation data is at least ``min_agreement`` and, when set, its max abs output difference
    is at most ``max_abs_diff``; a failing file is renamed ``<name>.failed.onnx``.

    ``noise_floor``: when the agreement is under ``min_agreement``, also measure how often the
    PyTorch model disagrees with itself when its inputs are perturbed at float-rounding level
    (quantized models can amplify such noise: a value on a rounding boundary moves a whole
    step). The export then fails only if its disagreements are significantly more than that
    floor's: a one-sided binomial test of equal rates at level ``significance``.
    """

    min_agreement: float = DEFAULT_AGREEMENT
    max_abs_diff: float | None = None
    noise_floor: bool = True
    significance: float = 0.01

    def __post_init__(self) -> None:
        _fraction(self.min_agreement, "min_agreement")
        _fraction(self.significance, "significance")
        _flag(self.noise_floor, "noise_floor")
        limit = self.max_abs_diff
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0
        ):
            raise UserError(f"max_abs_diff must be a positive number or null, got {limit!r}")

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
        if self.max_abs_diff is not None and parity["max_abs_diff"] > self.max_abs_diff:
            out.append(f"max abs diff {parity['max_abs_diff']:.3g} > {self.max_abs_diff:.3g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidateStage:
        _check_keys(data, cls, "validate")
        return cls(**data)
