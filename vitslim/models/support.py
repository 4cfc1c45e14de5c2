"""Which models vitslim compresses: plain timm Vision Transformers, refused early otherwise.

Every stage patches timm's ``VisionTransformer``, ``Block`` and ``Attention`` (token reduction,
quantizer placement, sparsity, export), so a model is supported when it is built from exactly
those parts. The name check runs before anything is built or read; the structure check runs on
a model built on the ``meta`` device (no memory, no weights), so a refusal costs well under a
second, even for a giant model.
"""

from __future__ import annotations

import timm
from timm.layers import Attention, GluMlp, Mlp, PatchEmbed, SwiGLU
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from vitslim.errors import UserError

#: timm modules whose models may be plain ViTs (the structure check decides)
TIMM_MODULES = ("timm.models.vision_transformer", "timm.models.deit")
SUPPORTED = (
    "vitslim supports plain timm Vision Transformers (timm's vision_transformer and deit models built from "
    "its Block and Attention: class/distillation/register tokens, avg/token/attention pooling, qk-norm, "
    "layer-scale, pre-norm, GELU or SwiGLU MLPs) and Hugging Face ViT, DeiT and DINOv2 folders"
)
#: pooling the token-reduction patch knows how to weight by token size (or needs not)
POOLS = ("token", "avg", "avgmax", "max", "map")
MLPS = (Mlp, GluMlp, SwiGLU)


def check_supported_name(arch: str) -> None:
    """Refuse a timm architecture that lives outside the plain-ViT modules (Swin, BEiT, EVA, CaiT...)."""
    module = timm.models.model_entrypoint(arch).__module__
    if module not in TIMM_MODULES:
        raise UserError(f"{arch} is a {module.rsplit('.', 1)[-1]} model, not a plain ViT: {SUPPORTED}")


def unsupported_part(model: nn.Module) -> str | None:
    """What makes ``model`` other than a plain timm ViT, or None when it is one."""
    if type(model) not in (VisionTransformer, VisionTransformerDistilled):
        return f"its class is {type(model).__name__}"
    if type(model.patch_embed) is not PatchEmbed:
        return f"its patch embedding is a {type(model.patch_embed).__name__}"
    if model.global_pool not in POOLS:
        return f"its pooling is {model.global_pool or 'none'!r} (supported: {', '.join(POOLS)})"
    for i, block in enumerate(model.blocks):
        if type(block) is not Block:
            return f"block {i} is a {type(block).__name__}, not timm's Block"
        if type(block.attn) is not Attention:
            return f"block {i}'s attention is a {type(block.attn).__name__}, not timm's Attention"
        if type(block.mlp) not in MLPS:
            return f"block {i}'s MLP is a {type(block.mlp).__name__}"
    return None


def check_supported_model(model: nn.Module, label: str) -> None:
    """Refuse ``model`` (named ``label`` in the message) unless it is a plain timm ViT."""
    reason = unsupported_part(model)
    if reason is not None:
        raise UserError(f"{label} is not a plain ViT ({reason}): {SUPPORTED}")
