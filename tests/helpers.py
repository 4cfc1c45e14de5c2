"""Test helpers: tiny random timm ViTs of several families, and small image folders."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from PIL import Image

# Tiny members of the timm ViT families vitslim supports: plain ViT, DeiT-style, DINOv2-style
# (layer-scale + register tokens) and a class-token-free model with average pooling.
TINY_VITS = {
    "vit": dict(model_name="vit_tiny_patch16_224"),
    "deit": dict(model_name="deit_tiny_patch16_224"),
    "dinov2_reg": dict(model_name="vit_small_patch14_reg4_dinov2", patch_size=8, init_values=1e-5),
    "avgpool": dict(model_name="vit_tiny_patch16_224", class_token=False, global_pool="avg"),
}
TINY_ARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=10)


def tiny_vit(family: str = "vit", seed: int = 0, **overrides) -> torch.nn.Module:
    """A random tiny timm ViT of ``family`` (depth 2, dim 64, 32x32 input), eval mode."""
    torch.manual_seed(seed)
    args = {**TINY_ARGS, **TINY_VITS[family], **overrides}
    return timm.create_model(args.pop("model_name"), pretrained=False, **args).eval()


def write_class_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> Path:
    """Small random RGB PNGs in ``root/<class>/``."""
    gen = torch.Generator().manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (20, 24, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
