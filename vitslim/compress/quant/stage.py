"""The ``quant`` stage of a recipe: a quantization config plus how to calibrate it.

>>> stage = QuantStage.from_dict({"preset": "w4a4-adalog", "images": 64, "search": "progressive"})
>>> stage.config == QuantConfig.preset("w4a4-adalog")
True

``config`` keys override the preset's (``{"preset": "w8a8", "config": {"overrides": {"head.*": null}}}``
keeps the head float); without a preset they override the W8A8 default. ``mixed_precision``
(a :class:`~vitslim.compress.mixed.MixedPrecisionConfig` mapping) searches the bits of every
layer first, the config's bits being the starting point and its quantizers kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vitslim.compress.mixed import BitPlan, MixedPrecisionConfig, plan_mixed_precision
from vitslim.errors import UserError

from .apply import check_choice, quantize_
from .calibration import OBJECTIVES, SEARCHES
from .config import QuantConfig, suggest

__all__ = ["QuantStage"]

STAGE_KEYS = (
    "preset",
    "config",
    "images",
    "search",
    "objective",
    "sequential",
    "samples",
    "keep",
    "gptq",
    "bias_correction",
    "mixed_precision",
)
#: Calibration images used when a recipe does not say (the issue's 32-128 range, cheap end).
DEFAULT_IMAGES = 32


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class QuantStage:
    """What ``quantize_`` is called with: ``config``, calibration on ``images`` seeded images
    with ``search`` / ``objective`` / ``sequential`` / ``samples`` / ``keep`` / ``gptq`` /
    ``bias_correction`` (see ``quantize_``)."""

    config: QuantConfig = field(default_factory=QuantConfig)
    preset: str | None = None
    images: int = DEFAULT_IMAGES
    search: str = "mse"
    objective: str = "mse"
    sequential: bool = False
    samples: int = 2048
    keep: int = 8
    gptq: bool = False
    bias_correction: bool = False
    mixed_precision: MixedPrecisionConfig | None = None

    def __post_init__(self) -> None:
        check_choice("search", self.search, SEARCHES)
        check_choice("objective", self.objective, OBJECTIVES)
        for name in ("images", "samples", "keep"):
            _positive_int(getattr(self, name), name)
        for name in ("sequential", "gptq", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def describe(self) -> str:
        """A short human description, e.g. ``w8a8, 32 calibration images, mse search``."""
        bits = f"W{_bits(self.config.weight)}A{_bits(self.config.post_ln)}"
        what = self.preset or f"custom {bits}"
        how = f"{self.images} calibration images, {self.search} search"
        how += "" if self.objective == "mse" else f", {self.objective} objective"
        how += (", sequential" if self.sequential else "") + (", GPTQ weights" if self.gptq else "")
        how += ", bias-corrected" if self.bias_correction else ""
        mp = self.mixed_precision
        if mp is not None:
            bound = (
                f"{mp.budget.metric} <= {mp.budget.value:g}" if mp.budget is not None else f"drop <= {mp.max_drop:g} pt"
            )
            what += f", mixed precision {bound}"
        return f"{what} ({how})"

    def quantize_options(self) -> dict[str, Any]:
        """The calibration settings ``quantize_`` takes, besides config and data."""
        return {
            "search": self.search,
            "objective": self.objective,
            "sequential": self.sequential,
            "samples": self.samples,
            "keep": self.keep,
            "gptq": self.gptq,
            "bias_correction": self.bias_correction,
        }

    def apply(self, model: nn.Module, calibration: list, *, progress: bool = True, seed: int = 0) -> BitPlan | None:
        """Quantize ``model`` in place, calibrated on ``calibration`` (batches, already ``images``
        long); with ``mixed_precision`` the bits are planned first and the plan is returned."""
        config, plan = self.config, None
        if self.mixed_precision is not None:
            plan = plan_mixed_precision(
                model,
                config,
                self.mixed_precision,
                calibration,
                progress=progress,
                seed=seed,
                quantize_options=self.quantize_options(),
            )
            config = plan.to_quant_config(config)
        quantize_(model, config, calibration, progress=progress, seed=seed, **self.quantize_options())
        return plan

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        out["mixed_precision"] = None if self.mixed_precision is None else self.mixed_precision.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantStage:
        """Validate recipe settings (unknown keys and bad values are UserErrors)."""
        if not isinstance(data, Mapping):
            raise UserError(f"the quant stage must be a mapping of settings, got {data!r}")
        for key in data:
            if key not in STAGE_KEYS:
                raise UserError(
                    f"unknown key {key!r}{suggest(str(key), STAGE_KEYS)} (allowed: {', '.join(STAGE_KEYS)})"
                )
        preset = data.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise UserError(f"preset must be a string, got {preset!r}")
        base = QuantConfig.preset(preset) if preset else QuantConfig()
        changes = data.get("config") or {}
        if not isinstance(changes, Mapping):
            raise UserError(f"config must be a mapping of quantization settings, got {changes!r}")
        config = QuantConfig.from_dict({**base.to_dict(), **changes})
        settings = {k: data[k] for k in STAGE_KEYS[2:-1] if k in data}
        mixed = data.get("mixed_precision")
        if mixed is not None:
            mixed = MixedPrecisionConfig.from_dict(mixed)
        return cls(config=config, preset=preset, mixed_precision=mixed, **settings)


def _bits(spec: Any) -> str:
    return "f" if spec is None else str(spec.bits)
