"""Static facts about a model: parameters, FLOPs, tokens and layers."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitslim.compress.quant import QuantConfig, find_sites
from vitslim.compress.tokens import TokenConfigError, TokenReductionConfig, estimate_flops
from vitslim.models import LoadedModel

#: keys of a model_info result shown by their own lines (``recipe``: the recipe's, given apart)
_DETAILED = ("tokens_per_layer", "token_reduction", "quantization", "recipe")


def count_flops(model: torch.nn.Module, input_size: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass on one image, counted by PyTorch."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    return int(counter.get_total_flops())


def token_reduction_info(model: torch.nn.Module, cfg: TokenReductionConfig) -> dict:
    """Tokens per layer and block FLOPs (attention + MLP) of ``model`` under ``cfg``, reduced vs unreduced."""
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        raise TokenConfigError(f"token schedules need a timm VisionTransformer, not {type(model).__name__}")
    flops = estimate_flops(model, cfg)
    return {
        "config": cfg.to_dict(),
        "tokens_per_layer": flops["tokens_per_layer"],
        "block_flops": flops["total_flops"],
        "unreduced_block_flops": flops["unreduced_flops"],
        "flops_ratio": flops["ratio"],
    }


def quantization_plan(model: torch.nn.Module, cfg: QuantConfig) -> dict:
    """How many quantizer sites of each kind ``cfg`` gives which quantizer and bits (or keeps float)."""
    sites = find_sites(model)
    specs = cfg.resolve(sites)
    kinds = {site.name: site.kind for site in sites}
    counts = Counter(
        f"{kinds[name]}: float" if spec is None else f"{kinds[name]}: {spec.quantizer} {spec.bits}-bit"
        for name, spec in specs.items()
    )
    return {"sites": len(specs), "by_kind": dict(sorted(counts.items()))}


def model_info(loaded: LoadedModel, tokens: TokenReductionConfig | None = None) -> dict:
    """Parameters, FLOPs per image, token count and layer structure of a loaded model.

    ``tokens_per_layer`` lists the tokens into each block, then out of the last one. With a
    token-reduction config ``tokens``, ``token_reduction`` holds the same under that schedule
    with the blocks' FLOPs reduced and unreduced (see :func:`token_reduction_info`).
    """
    model = loaded.model
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    info = {
        "name": loaded.name,
        "source": loaded.source,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": list(loaded.input_size),
        "num_classes": loaded.num_classes,
        "flops_per_image": count_flops(model, loaded.input_size),
        "linear_layers": len(linears),
    }
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(model, "blocks"):
        prefix = getattr(model, "num_prefix_tokens", 0)
        info.update(
            depth=len(model.blocks),
            embed_dim=getattr(model, "embed_dim", None),
            num_heads=getattr(model.blocks[0].attn, "num_heads", None) if len(model.blocks) else None,
            patch_size=list(getattr(patch_embed, "patch_size", [])),
            prefix_tokens=prefix,
            tokens=patch_embed.num_patches + prefix,
        )
        info["tokens_per_layer"] = [info["tokens"]] * (info["depth"] + 1)
    if tokens is not None:
        info["token_reduction"] = token_reduction_info(model, tokens)
    return info


def info_lines(info: dict, recipe: str | None = None) -> list[str]:
    """``vitslim info``'s text for a :func:`model_info` result (with ``quantization`` when a recipe
    quantizes), ``recipe`` naming the recipe when one was given."""
    lines = [f"{key:>16}: {value}" for key, value in info.items() if key not in _DETAILED]
    if recipe is not None:
        lines.append(f"{'recipe':>16}: {recipe}")
    reduction = info.get("token_reduction")
    if reduction is not None:
        lines.append(f"{'tokens_per_layer':>16}: {' -> '.join(map(str, reduction['tokens_per_layer']))}")
        lines.append(
            f"{'block_flops':>16}: {reduction['block_flops']:,} reduced vs {reduction['unreduced_block_flops']:,} "
            f"unreduced ({reduction['flops_ratio']:.3f}x; attention + MLP of the blocks)"
        )
    quant = info.get("quantization")
    if quant is not None:
        lines.append(f"{'quant_sites':>16}: {quant['sites']}")
        lines += [f"{'':>16}  {count:>3} x {kind}" for kind, count in quant["by_kind"].items()]
    return lines
