"""The ``tokens`` stage of a recipe: token merging or pruning, and what reports say about tokens
(rendered by :mod:`.report`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vitslim.stages import Calibration, Family, StageRecord

from .config import TokenReductionConfig, token_config_from_dict
from .patch import apply_token_reduction
from .report import TokenEntries, token_columns, token_figures
from .schedule import estimate_flops

__all__ = ["FLOPS_NOTE", "STAGE", "apply", "token_stats", "token_notes"]

FLOPS_NOTE = (
    "block_flops_per_image counts the attention and MLP of the transformer blocks on the tokens each block "
    "sees (token reduction overhead included; patch embedding, norms and head excluded)."
)


def apply(model: nn.Module, config: TokenReductionConfig, calibration: Calibration) -> StageRecord:
    """Patch ``model`` in place for ``config``'s token reduction (no calibration needed)."""
    apply_token_reduction(model, config)
    return StageRecord(config.describe(), config)


def token_stats(model: nn.Module) -> dict[str, Any]:
    """Tokens per layer and block FLOPs of ``model`` as it is now (reduced or not)."""
    flops = estimate_flops(model)
    return {"tokens_per_layer": flops["tokens_per_layer"], "block_flops_per_image": flops["total_flops"]}


def token_notes(variants: list[dict]) -> list[str]:
    """What the FLOPs count, and the tokens and FLOPs of every variant with fewer tokens than the first."""
    fp32 = variants[0]
    notes = [FLOPS_NOTE]
    for v in variants[1:]:
        if v["tokens_per_layer"] != fp32["tokens_per_layer"]:
            tokens = " → ".join(map(str, v["tokens_per_layer"]))
            ratio = v["block_flops_per_image"] / fp32["block_flops_per_image"]
            notes.append(
                f"{v['name']} ({v['description']}): tokens per block {tokens}; "
                f"block FLOPs {v['block_flops_per_image'] / 1e9:.3g} G per image, {ratio:.2f}x of fp32."
            )
    return notes


STAGE = Family(
    from_dict=token_config_from_dict,
    apply=apply,
    measure=token_stats,
    notes=token_notes,
    entries=TokenEntries,
    columns=token_columns,
    figures=token_figures,
)
