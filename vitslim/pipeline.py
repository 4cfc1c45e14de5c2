"""The compress run: apply a recipe's stages cumulatively and measure every step against fp32."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vitslim.compress.tokens import TokenMergeConfig, TokenPruneConfig, apply_token_reduction, estimate_flops
from vitslim.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP
from vitslim.files import staged_output_dir
from vitslim.measure import MeasureSettings, load_eval_data, measure_variant, new_report
from vitslim.models import LoadedModel
from vitslim.recipes import Recipe
from vitslim.report import write_report

EVAL_BATCH_SIZE = 32
FLOPS_NOTE = (
    "block_flops_per_image counts the attention and MLP of the transformer blocks on the tokens each block "
    "sees (token reduction overhead included; patch embedding, norms and head excluded)."
)


def describe_tokens(cfg: TokenMergeConfig | TokenPruneConfig) -> str:
    """A short human description of a token-reduction config, e.g. ``ToMe r=8 constant``."""
    if isinstance(cfg, TokenPruneConfig):
        text = f"EViT keep {cfg.keep_rate:g} at layers {','.join(map(str, cfg.layers))}"
    elif cfg.keep_ratio is not None:
        text = f"ToMe keep ratio {cfg.keep_ratio:g} {cfg.schedule}"
    elif cfg.flops_ratio is not None:
        text = f"ToMe FLOPs ratio {cfg.flops_ratio:g} {cfg.schedule}"
    elif isinstance(cfg.r, tuple) or isinstance(cfg.schedule, tuple):
        r = cfg.r if isinstance(cfg.r, tuple) else cfg.schedule
        text = f"ToMe r per layer {list(r)}"
    else:
        text = f"ToMe r={cfg.r} {cfg.schedule}"
    return text + ("" if cfg.proportional_attention else ", no proportional attention")


def _apply_tokens(model: torch.nn.Module, cfg: TokenMergeConfig | TokenPruneConfig) -> str:
    apply_token_reduction(model, cfg)
    return describe_tokens(cfg)


#: stage name -> apply its config to a model in place, returning a description of what it did
STAGE_APPLIERS: dict[str, Callable[[torch.nn.Module, Any], str]] = {"tokens": _apply_tokens}


def build_variants(model: torch.nn.Module, recipe: Recipe) -> list[tuple[str, str, torch.nn.Module]]:
    """``(stage name, description, model)`` for each cumulative stage of ``recipe``; ``model``
    itself is left untouched (each stage works on a copy of the previous stage's model)."""
    variants = []
    for stage, cfg in recipe.stages.items():
        model = copy.deepcopy(model)
        variants.append((stage, STAGE_APPLIERS[stage](model, cfg), model))
    return variants


def token_stats(model: torch.nn.Module) -> dict[str, Any]:
    """Tokens per layer and block FLOPs of ``model`` as it is now (reduced or not)."""
    flops = estimate_flops(model)
    return {"tokens_per_layer": flops["tokens_per_layer"], "block_flops_per_image": flops["total_flops"]}


def _token_note(variant: dict, fp32: dict) -> str:
    tokens = " → ".join(map(str, variant["tokens_per_layer"]))
    ratio = variant["block_flops_per_image"] / fp32["block_flops_per_image"]
    return (
        f"{variant['name']} ({variant['description']}): tokens per block {tokens}; "
        f"block FLOPs {variant['block_flops_per_image'] / 1e9:.3g} G per image, {ratio:.2f}x of fp32."
    )


def run_recipe(loaded: LoadedModel, recipe: Recipe, settings: MeasureSettings, command: str = "") -> dict:
    """Measure ``fp32`` and then one variant per cumulative stage of ``recipe`` (fidelity against
    fp32); return the report dict. The stages are applied before anything is measured, so a
    recipe that does not fit the model fails fast."""
    stages = build_variants(loaded.model, recipe)
    fp32, reference = measure_variant("fp32", "uncompressed model", loaded.model, loaded, settings)
    fp32.update(token_stats(loaded.model))
    variants = [fp32]
    for name, description, model in stages:
        variant, _ = measure_variant(name, description, model, loaded, settings, reference=reference)
        variant.update(token_stats(model))
        variants.append(variant)
    report = new_report(loaded, settings, variants, command)
    report["recipe"] = recipe.to_dict()
    report["notes"] = [FLOPS_NOTE] + [_token_note(v, fp32) for v in variants[1:]]
    return report


def compress(
    loaded: LoadedModel,
    recipe: Recipe,
    out: str | Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    threads: int = 0,
    batch_sizes: Sequence[int] = (1, 16),
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Run ``recipe`` on ``loaded`` and write report.json, report.md and one ONNX model per
    variant into ``out``. The folder appears only when everything succeeded; an existing
    non-empty ``out`` is refused unless ``overwrite``. ``data`` defaults to the model's own
    evaluation data (the demo's Fashion-MNIST test split). Returns the report dict."""
    with staged_output_dir(out, overwrite=overwrite) as staging:
        eval_data = load_eval_data(loaded, data, limit, seed, eval_batch_size)
        settings = MeasureSettings(eval_data, staging, threads, list(batch_sizes), progress, warmup, runs)
        report = run_recipe(loaded, recipe, settings, command)
        write_report(staging, report)
    return report
