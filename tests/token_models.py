"""Tiny timm ViTs for the token-reduction tests: every token layout (class token, registers,
layer scale, average pooling, distillation token) with weights strong enough that reduction shows."""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

IMG = 32  # patch 4 -> 64 patch tokens
TINY = dict(pretrained=False, img_size=IMG, patch_size=4, embed_dim=64, num_heads=2, num_classes=10)

VARIANTS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "reg": ("vit_tiny_patch16_224", {"reg_tokens": 2}),
    "layerscale": ("vit_tiny_patch16_224", {"init_values": 1e-5}),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
}


def make(variant: str = "vit", depth: int = 4, fused: bool | None = None, seed: int = 0) -> VisionTransformer:
    name, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    model = timm.create_model(name, depth=depth, **TINY, **extra).eval()
    strengthen(model)
    if variant == "layerscale":  # make the layer-scale branch matter
        for blk in model.blocks:
            blk.ls1.gamma.data.fill_(0.5)
            blk.ls2.gamma.data.fill_(0.5)
    if fused is not None:
        for blk in model.blocks:
            blk.attn.fused_attn = fused
    return model


def strengthen(model: torch.nn.Module) -> None:
    """Re-draw the blocks' Linear weights with std 1/sqrt(fan_in): timm's 0.02 init makes the
    attention nearly uniform and the branches tiny, which would hide reduction effects."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for blk in model.blocks:
            for m in blk.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.in_features**-0.5)


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def run(model, x):
    with torch.no_grad():
        return model(x)
