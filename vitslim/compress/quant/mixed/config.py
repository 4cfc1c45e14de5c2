"""Plain-data config of the mixed-precision stage (``quant: {mixed_precision: {...}}`` in a recipe).

>>> MixedPrecisionConfig.from_dict({"budget": {"avg_weight_bits": 4.5}}).budget
Budget(metric='avg_weight_bits', value=4.5)
>>> MixedPrecisionConfig.from_dict({"max_drop": 1.0}).max_drop
1.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vitslim.compress.quant.base import MAX_BITS, MIN_BITS
from vitslim.config import check_choice, check_flag, check_keys
from vitslim.errors import UserError

__all__ = ["BUDGET_METRICS", "SENSITIVITY_METHODS", "Budget", "MixedPrecisionConfig"]

#: What a budget can bound: parameter-weighted mean weight bits, model bytes, bit-operations.
BUDGET_METRICS = ("avg_weight_bits", "size_bytes", "bops")
#: ``kl`` / ``mse``: measured model-output damage; ``fisher``: diagonal-Fisher estimate.
SENSITIVITY_METHODS = ("kl", "mse", "fisher")


def _number(value: Any, where: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a number, got {value!r}")
    if positive and value <= 0:
        raise UserError(f"{where} must be positive, got {value!r}")
    return float(value)


def _int(value: Any, where: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise UserError(f"{where} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return value


def _bits(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise UserError(f"{where} must be a non-empty list of bit-widths, got {value!r}")
    bits = sorted({_int(b, f"{where} entry", MIN_BITS, MAX_BITS) for b in value})
    return tuple(bits)


@dataclass(frozen=True)
class Budget:
    """An upper bound on one cost: ``avg_weight_bits`` (parameter-weighted), ``size_bytes`` or
    ``bops`` (MACs x weight bits x activation bits); float parts count 32 bits."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        check_choice("budget", self.metric, BUDGET_METRICS)
        object.__setattr__(self, "value", _number(self.value, f"budget {self.metric}"))

    def to_dict(self) -> dict[str, float]:
        return {self.metric: self.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        check_keys(data, BUDGET_METRICS, "mixed_precision budget")
        if len(data) != 1:
            raise UserError(f"a mixed_precision budget names exactly one of {', '.join(BUDGET_METRICS)}")
        ((metric, value),) = data.items()
        return cls(metric, value)


@dataclass(frozen=True)
class MixedPrecisionConfig:
    """Per-layer bit allocation: exactly one of ``budget`` (a :class:`Budget`) or ``max_drop``
    (accuracy points: top-1 when labelled, else agreement with FP32).

    ``weight_bits`` / ``act_bits``: candidate bit-widths of each Linear's (and the patch
    embedding's) weight and of its input site; activation bits are only searched when the
    budget is ``bops`` (otherwise they stay the base config's). ``sensitivity``: ``kl`` / ``mse``
    of the model output against FP32 with one layer quantized, or ``fisher``. ``images``:
    calibration images used for sensitivities. ``measure_bits``: weight bit-widths measured at
    the model output (``"all"``; default: the lowest and the middle candidate), the others are
    interpolated through the layer's own output error. ``allow_float``: ``max_drop`` may keep
    the most sensitive layers float. ``holdout``: fraction of the calibration data held out to
    measure the drop when no eval data is given.
    """

    budget: Budget | None = None
    max_drop: float | None = None
    weight_bits: tuple[int, ...] = (3, 4, 5, 6, 8)
    act_bits: tuple[int, ...] = (4, 6, 8)
    sensitivity: str = "kl"
    images: int = 16
    measure_bits: tuple[int, ...] | str | None = None
    allow_float: bool = True
    holdout: float = 0.5

    def __post_init__(self) -> None:
        if (self.budget is None) == (self.max_drop is None):
            raise UserError("mixed_precision needs exactly one of 'budget' or 'max_drop'")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise UserError(f"budget must be a Budget, got {type(self.budget).__name__}")
        if self.max_drop is not None:
            object.__setattr__(self, "max_drop", _number(self.max_drop, "max_drop", positive=False))
            if self.max_drop < 0:
                raise UserError(f"max_drop must be >= 0 (accuracy points), got {self.max_drop}")
        object.__setattr__(self, "weight_bits", _bits(self.weight_bits, "weight_bits"))
        object.__setattr__(self, "act_bits", _bits(self.act_bits, "act_bits"))
        if self.measure_bits is not None and self.measure_bits != "all":
            measure = _bits(self.measure_bits, "measure_bits")
            missing = [b for b in measure if b not in self.weight_bits]
            if missing:
                raise UserError(f"measure_bits {missing} are not among weight_bits {list(self.weight_bits)}")
            object.__setattr__(self, "measure_bits", measure)
        check_choice("sensitivity", self.sensitivity, SENSITIVITY_METHODS)
        _int(self.images, "images", 1)
        check_flag(self.allow_float, "allow_float")
        holdout = _number(self.holdout, "holdout")
        if not 0 < holdout < 1:
            raise UserError(f"holdout must be a fraction in (0, 1), got {holdout}")
        object.__setattr__(self, "holdout", holdout)

    @property
    def anchors(self) -> tuple[int, ...]:
        """The weight bit-widths measured at the model output."""
        if self.measure_bits == "all":
            return self.weight_bits
        if self.measure_bits is None:
            return tuple(sorted({self.weight_bits[0], self.weight_bits[len(self.weight_bits) // 2]}))
        return self.measure_bits

    @property
    def searches_activations(self) -> bool:
        """Whether activation bits are part of the search (only bit-operations depend on them)."""
        return self.budget is not None and self.budget.metric == "bops"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "budget":
                value = None if value is None else value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixedPrecisionConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types are :class:`UserError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(data, names, "mixed_precision")
        kw = dict(data)
        if kw.get("budget") is not None:
            kw["budget"] = Budget.from_dict(kw["budget"])
        return cls(**kw)
