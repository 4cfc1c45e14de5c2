"""The ``quant`` stage of a recipe: a quantization config plus how to calibrate it, and what
reports say about quantized variants (rendered by :mod:`.report`).

>>> stage = QuantStage.from_dict({"preset": "w4a4-adalog", "images": 64, "search": "progressive"})
>>> stage.config == QuantConfig.preset("w4a4-adalog")
True

``reduce_range`` (``auto``, ``true``, ``false``) keeps 8-bit weights to 7 bits where the deployment
CPU's int8 kernels would saturate (``auto``: x86 without VNNI, see
:func:`~vitslim.evaluate.environment.int8_saturates`), as ONNX Runtime's quantizer's
``reduce_range`` and NNCF's ``overflow_fix`` do.

``config`` keys override the preset's (``{"preset": "w8a8", "config": {"overrides": {"head.*": null}}}``
keeps the head float); without a preset they override the W8A8 default. ``mixed_precision``
(a :class:`~.mixed.MixedPrecisionConfig` mapping) searches the bits of every
layer first, the config's bits being the starting point and its quantizers kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vitslim.config import check_choice, check_flag, check_keys, check_renamed
from vitslim.errors import UserError
from vitslim.stages import Calibration, Family, StageRecord

from .apply import quantize_
from .config import QuantConfig
from .mixed import MixedPrecisionConfig, mixed_precision_summary, plan_mixed_precision
from .placement import quant_points, quantization_info
from .report import QuantEntries, quant_figures, quant_section
from .search import OBJECTIVES, SEARCHES
from .sites import find_sites

__all__ = [
    "QuantStage",
    "STAGE",
    "apply",
    "calibrates",
    "check",
    "caution",
    "quant_summary",
    "measure",
    "summarize",
    "notes",
]

STAGE_KEYS = (
    "preset",
    "config",
    "images",
    "search",
    "objective",
    "sequential",
    "tokens_per_site",
    "keep",
    "gptq",
    "bias_correction",
    "mixed_precision",
    "reduce_range",
)
#: the weight bits that int8 kernels without VNNI compute exactly (2 · 255 · 63 < 2^15)
REDUCED_WEIGHT_BITS = 7
#: Calibration images used when a recipe does not say (the issue's 32-128 range, cheap end).
DEFAULT_IMAGES = 32


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class QuantStage:
    """What ``quantize_`` is called with: ``config``, calibration on ``images`` seeded images
    with ``search`` / ``objective`` / ``sequential`` / ``tokens_per_site`` (``quantize_``'s
    ``samples``) / ``keep`` / ``gptq`` / ``bias_correction`` (see ``quantize_``)."""

    config: QuantConfig = field(default_factory=QuantConfig)
    preset: str | None = None
    images: int = DEFAULT_IMAGES
    search: str = "mse"
    objective: str = "mse"
    sequential: bool = False
    tokens_per_site: int = 2048
    keep: int = 8
    gptq: bool = False
    bias_correction: bool = False
    mixed_precision: MixedPrecisionConfig | None = None
    reduce_range: bool | str = "auto"

    def __post_init__(self) -> None:
        check_choice("search", self.search, SEARCHES)
        check_choice("objective", self.objective, OBJECTIVES)
        for name in ("images", "tokens_per_site", "keep"):
            _positive_int(getattr(self, name), name)
        for name in ("sequential", "gptq", "bias_correction"):
            check_flag(getattr(self, name), name)
        if self.reduce_range != "auto":
            check_flag(self.reduce_range, "reduce_range (or 'auto')")

    def reduces_range(self, int8_saturates: bool) -> bool:
        """Whether weights are kept to 7 bits, on a deployment CPU whose int8 kernels saturate or not."""
        return int8_saturates if self.reduce_range == "auto" else bool(self.reduce_range)

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
            "samples": self.tokens_per_site,
            "keep": self.keep,
            "gptq": self.gptq,
            "bias_correction": self.bias_correction,
        }

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        out["mixed_precision"] = None if self.mixed_precision is None else self.mixed_precision.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantStage:
        """Validate recipe settings (unknown keys and bad values are UserErrors)."""
        check_renamed(data, {"samples": "'tokens_per_site' (tokens kept per site for the search)"})
        check_keys(data, STAGE_KEYS)
        preset = data.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise UserError(f"preset must be a string, got {preset!r}")
        base = QuantConfig.preset(preset) if preset else QuantConfig()
        changes = data.get("config") or {}
        if not isinstance(changes, Mapping):
            raise UserError(f"config must be a mapping of quantization settings, got {changes!r}")
        config = QuantConfig.from_dict({**base.to_dict(), **changes})
        settings = {k: data[k] for k in STAGE_KEYS[2:] if k in data and k != "mixed_precision"}
        mixed = data.get("mixed_precision")
        if mixed is not None:
            mixed = MixedPrecisionConfig.from_dict(mixed)
        return cls(config=config, preset=preset, mixed_precision=mixed, **settings)


def _bits(spec: Any) -> str:
    return "f" if spec is None else str(spec.bits)


def apply(model: nn.Module, stage: QuantStage, calibration: Calibration) -> StageRecord:
    """Quantize ``model`` in place, calibrated on ``stage.images`` seeded images; with
    ``mixed_precision`` the bits are planned first and the plan is the record."""
    images = calibration.calibration(stage.images)
    config, report, progress, seed = stage.config, None, calibration.progress, calibration.seed
    if stage.mixed_precision is not None:
        options = stage.quantize_options()
        plan = plan_mixed_precision(
            model, config, stage.mixed_precision, images, progress=progress, seed=seed, quantize_options=options
        )
        config, report = plan.to_quant_config(config), mixed_precision_summary(plan)
    description = stage.describe()
    if stage.reduces_range(calibration.int8_saturates):
        config = dataclasses.replace(config, max_weight_bits=REDUCED_WEIGHT_BITS)
        description += f", weights kept to {REDUCED_WEIGHT_BITS} bits (reduce_range)"
    quantize_(model, config, images, progress=progress, seed=seed, **stage.quantize_options())
    return StageRecord(description, stage, report)


def quant_summary(model: nn.Module) -> dict[str, Any] | None:
    """How a variant was quantized (config and calibration settings), None when it was not."""
    info = quantization_info(model)
    if info is None:
        return None
    summary = {k: info[k] for k in ("config", "search", "objective", "sequential", "seed", "images", "gptq")}
    summary["bias_correction"] = info.get("bias_correction")  # absent from models saved before it existed
    summary["sites"] = {
        name: {"kind": p.kind, "quantizer": p.quantizer.name, "bits": p.quantizer.bits}
        for name, p in quant_points(model).items()
    }
    return summary


def calibrates(stage: QuantStage) -> bool:
    """Quantization always calibrates on images."""
    return True


def check(model: nn.Module, stage: QuantStage) -> None:
    """Resolve the config against the model's sites (a model quantization does not support fails here)."""
    stage.config.resolve(find_sites(model))


def caution(stage: QuantStage, calibration: Calibration) -> str | None:
    """On a deployment CPU without VNNI: int8 kernels rarely beat fp32 there (``bench_cpu.py`` on a
    2-core AVX2-only EPYC, 2026-12: ONNX Runtime W8A8 0.90x of fp32 at batch 1, OpenVINO int8
    0.46-0.65x)."""
    if not calibration.int8_saturates:
        return None
    return (
        "this CPU has no VNNI (no avx512_vnni, avx_vnni or amx_int8): int8 kernels rarely beat fp32 here "
        "(on an AVX2-only EPYC, ONNX Runtime's W8A8 ran at 0.90x and OpenVINO's int8 at 0.46-0.65x of fp32's "
        "speed, batch 1); "
        "the report's summary says whether this run's int8 file is faster, within noise or slower"
    )


def measure(model: nn.Module) -> dict[str, Any]:
    """``quantization``: every variant's :func:`quant_summary`."""
    return {"quantization": quant_summary(model)}


def summarize(record: StageRecord, model: nn.Module, onnx_path: Path, own: bool) -> dict[str, Any]:
    """``mixed_precision``: the plan of the variant quantized last, when it has one."""
    return {"mixed_precision": record.report} if own and record.report else {}


def notes(variants: list[dict]) -> list[str]:
    """Why the weights of a variant were kept to fewer bits than its recipe asked (reduce_range)."""
    capped = [v["name"] for v in variants if ((v.get("quantization") or {}).get("config") or {}).get("max_weight_bits")]
    if not capped:
        return []
    return [
        f"{', '.join(capped)}: weights quantized to at most {REDUCED_WEIGHT_BITS} bits (reduce_range): on an x86 CPU "
        "without VNNI, int8 kernels (ONNX Runtime, OpenVINO) sum u8 x s8 products in saturating 16-bit pairs, "
        f"which {REDUCED_WEIGHT_BITS}-bit weights keep exact; 'reduce_range: false' keeps 8 bits and the deviation."
    ]


STAGE = Family(
    from_dict=QuantStage.from_dict,
    apply=apply,
    calibrates=calibrates,
    check=check,
    caution=caution,
    measure=measure,
    summarize=summarize,
    notes=notes,
    entries=QuantEntries,
    sections=quant_section,
    figures=quant_figures,
)
