"""``quantize_``: the one verb of post-training quantization (reparameterise, place, calibrate)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vitslim.compress.calibration.batches import calibration_batches
from vitslim.config import check_choice
from vitslim.errors import UserError

from .bias_correction import bias_correct_, reference_means
from .calibration import calibrate_model
from .config import QuantConfig
from .gptq import gptq_
from .placement import INFO, apply_quantization, is_quantized
from .reparam import fold_gelu_shift, reparameterize_attentions, reparameterize_layernorms, rotate_qk
from .search import OBJECTIVES, SEARCHES
from .sites import find_sites, layernorm_consumers

__all__ = ["quantize_"]

log = logging.getLogger(__name__)


def fold_reparameterisations(
    model: nn.Module,
    cfg: QuantConfig,
    specs: Mapping[str, Any],
    batches: Iterable[Tensor],
    *,
    samples: int = 2048,
    seed: int = 0,
) -> None:
    """Fold what ``cfg`` asks for into ``model`` (float outputs unchanged): the q/k rotation of
    the attentions whose q or k is quantized, AdaLog's post-GELU shift where ``fc2``'s input is
    quantized, RepQ-ViT's post-LN reparameterisation of the LayerNorms whose consumers have a
    uniform input quantizer, and the same for the attention outputs where ``proj``'s input
    quantizer is uniform (``specs``: site name -> spec)."""
    attns = [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    if cfg.qk_rotation:
        rotate_qk(model, [a for a in attns if specs.get(f"{a}.q") or specs.get(f"{a}.k")], seed=seed)
    if cfg.gelu_shift:
        mlps = [n[: -len(".fc2.input")] for n, s in specs.items() if n.endswith("mlp.fc2.input") and s]
        fold_gelu_shift(model, mlps)
    if cfg.ln_reparam:
        consumers = layernorm_consumers(model)
        bits = {n: s.bits for n, linears in consumers.items() if _uniform(s := specs.get(f"{linears[0]}.input"))}
        reparameterize_layernorms(model, batches, bits, target=cfg.ln_reparam, samples=samples, seed=seed)
    if cfg.attn_reparam:
        bits = {a: s.bits for a in attns if _uniform(s := specs.get(f"{a}.proj.input"))}
        reparameterize_attentions(model, batches, bits, target=cfg.attn_reparam, samples=samples, seed=seed)


def _uniform(spec: Any) -> bool:
    return spec is not None and spec.quantizer == "uniform"


def quantize_(
    model: nn.Module,
    cfg: QuantConfig | Mapping[str, Any],
    data: Tensor | Iterable,
    *,
    search: str = "mse",
    objective: str = "mse",
    sequential: bool = False,
    progress: bool = True,
    seed: int = 0,
    samples: int = 2048,
    keep: int = 8,
    gptq: bool = False,
    bias_correction: bool = False,
) -> nn.Module:
    """Quantize a timm ViT in place with ``cfg``, calibrated on ``data`` (image batches, or a
    DataLoader of ``(images, labels)``); returns ``model`` with every quantizer enabled.

    Steps: the reparameterisations ``cfg`` asks for (post-GELU shift, post-LN channel folding),
    quantizer placement (:func:`~vitslim.compress.quant.placement.apply_quantization`) and
    calibration (:func:`~vitslim.compress.quant.calibration.calibrate_model`: ``search`` in
    ``mse | minmax | percentile | progressive``, ``objective`` in ``mse | cosine`` on each
    layer's output, ``sequential`` block by block, about ``samples`` tokens kept per site,
    ``keep`` candidates re-scored per site) and, with ``gptq``, GPTQ rounding of the Linear
    weights on their calibrated grids (:mod:`~vitslim.compress.quant.gptq`) instead of
    round-to-nearest (its Hessians block by block too when ``sequential``), and with
    ``bias_correction`` the empirical bias correction of every quantized layer towards the float
    model's mean output (:mod:`~vitslim.compress.quant.bias_correction`). Deterministic for a
    given ``seed``.
    """
    cfg = cfg if isinstance(cfg, QuantConfig) else QuantConfig.from_dict(cfg)
    check_choice("search", search, SEARCHES)
    check_choice("objective", objective, OBJECTIVES)
    if samples < 1 or keep < 1:
        raise UserError("samples and keep must be positive")
    if is_quantized(model):
        raise UserError("model is already quantized: call remove_quantization(model) first")
    specs = cfg.resolve(find_sites(model))
    param = next(model.parameters())
    batches = calibration_batches(data, param.device)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            fold_reparameterisations(model, cfg, specs, batches, samples=samples, seed=seed)
            apply_quantization(model, specs, seed=seed)
            reference = reference_means(model, batches) if bias_correction else None
            errors = calibrate_model(
                model,
                batches,
                search=search,
                objective=objective,
                sequential=sequential,
                samples=samples,
                keep=keep,
                seed=seed,
                progress=progress,
            )
            rounding = gptq_(model, batches, sequential=sequential, progress=progress) if gptq else None
            corrected = bias_correct_(model, batches, reference, progress=progress) if bias_correction else None
    finally:
        model.train(was_training)
    images = sum(b.shape[0] for b in batches)
    _log_result(errors, search, images, time.perf_counter() - start, rounding, corrected)
    model.__dict__[INFO] = {
        "config": cfg.to_dict(),
        "search": search,
        "objective": objective,
        "sequential": sequential,
        "seed": seed,
        "images": images,
        "site_errors": errors,
        "gptq": rounding,
        "bias_correction": corrected,
    }
    return model


def _log_result(
    errors: dict, search: str, images: int, seconds: float, rounding: dict | None, corrected: dict | None
) -> None:
    log.info("quantized %d sites, %s search on %d images (%.1f s)", len(errors), search, images, seconds)
    if rounding is not None:
        log.info(_gptq_text(rounding))
    if corrected is not None:
        log.info("bias-corrected %d layers (mean absolute bias change %.2e)", len(corrected), _mean(corrected.values()))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / max(1, len(values))


def _gptq_text(record: dict) -> str:
    layers = [e for e in record["layers"].values() if e["nearest"] is not None and e["gptq"] is not None]
    mean = {k: sum(e[k] for e in layers) / max(1, len(layers)) for k in ("nearest", "gptq")}
    return (
        f"GPTQ rounded {len(record['layers'])} Linear weights ({record['seconds']:.1f} s): mean relative output "
        f"error {mean['nearest']:.4f} with round-to-nearest, {mean['gptq']:.4f} with GPTQ"
    )
