"""Applying a recipe's model stages cumulatively: one :class:`Variant` per stage (and per stage
applied alone to the uncompressed model, when asked)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vitslim import stages as stage_table
from vitslim.errors import UserError
from vitslim.recipes import Recipe
from vitslim.stages import Calibration, StageRecord

__all__ = ["ALONE", "FP32", "Variant", "build_variants"]

log = logging.getLogger(__name__)
#: suffix of the variants that apply one stage alone to the uncompressed model
ALONE = "-alone"
#: the uncompressed variant's name
FP32 = "fp32"


@dataclass
class Variant:
    """A compressed model to measure: ``stage`` was applied last, to the variant named ``base``;
    ``applied`` holds the record of every stage applied to it, by stage."""

    name: str
    stage: str
    base: str
    description: str
    model: torch.nn.Module
    applied: dict[str, StageRecord]

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """What its stages recorded for the report (the sparsity layers, the mixed-precision plan), by stage."""
        return {stage: r.report for stage, r in self.applied.items() if r.report is not None}


def _apply_stage(
    model: torch.nn.Module, stage: str, cfg: Any, ctx: Calibration, name: str, base: str, applied: dict
) -> Variant:
    model = copy.deepcopy(model)
    start = time.perf_counter()
    record = stage_table.STAGES[stage].load().apply(model, cfg, ctx)
    log.info("stage %s: %s (%.1f s)", name, record.description, time.perf_counter() - start)
    return Variant(name, stage, base, record.description, model, {**applied, stage: record})


def build_variants(
    model: torch.nn.Module, recipe: Recipe, ctx: Calibration, *, alone: Sequence[str] = ()
) -> list[Variant]:
    """A :class:`Variant` per cumulative stage of ``recipe``, preceded by one per stage named in
    ``alone`` (a model stage of the recipe after the first) applied alone to ``model`` (named
    ``<stage>-alone``), so that stage's own effect is visible. ``model`` itself is left untouched
    (stages work on copies)."""
    chain = [(stage, cfg) for stage, cfg in recipe.stages.items() if stage_table.STAGES[stage].model_stage]
    later = [stage for stage, _ in chain[1:]]
    for stage in alone:
        if stage not in later:
            first = bool(chain) and stage == chain[0][0]
            reason = "is the recipe's first stage (its variant shows it alone)" if first else "is not a model stage"
            raise UserError(f"--alone {stage}: {stage!r} {reason}; choose from: {', '.join(later) or 'none'}")
    variants = [_apply_stage(model, s, cfg, ctx, s + ALONE, FP32, {}) for s, cfg in chain if s in alone]
    applied: dict[str, StageRecord] = {}
    base = FP32
    for stage, cfg in chain:
        variants.append(_apply_stage(model, stage, cfg, ctx, stage, base, applied))
        model, applied, base = variants[-1].model, variants[-1].applied, stage
    return variants
