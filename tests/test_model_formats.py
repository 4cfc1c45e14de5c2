"""Checkpoints in the formats timm reads, loaded through timm's own machinery; what is refused."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from tests.checkpoint_formats import dinov2_original, openai_clip, write_big_vision_npz
from vitslim.errors import UserError
from vitslim.models import load_model

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def source(name: str, **args) -> torch.nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(name, **{**TINY, **args}).eval()
    with torch.no_grad():  # class/register tokens away from timm's near-zero init, so they matter
        for param in (model.cls_token, getattr(model, "reg_token", None), getattr(model, "dist_token", None)):
            if param is not None:
                param.normal_()
    return model


def max_diff(a: torch.nn.Module, b: torch.nn.Module, size: tuple[int, int]) -> float:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def test_distilled_checkpoint_sizes_both_heads(tmp_path: Path) -> None:
    args = {"img_size": 32, "patch_size": 8}
    model = source("deit_tiny_distilled_patch16_224", num_classes=5, **args)
    path = tmp_path / "deit.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    loaded = load_model("deit_tiny_distilled_patch16_224", checkpoint=path, model_args={**TINY, **args})
    assert loaded.num_classes == 5 and type(loaded.model).__name__ == "VisionTransformerDistilled"
    assert max_diff(loaded.model, model, (32, 32)) == 0.0
    backbone = load_model("deit_tiny_distilled_patch16_224", checkpoint=path, num_classes=0, model_args=TINY | args)
    assert backbone.num_classes == 0 and backbone.model(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    with pytest.raises(UserError, match="has a 5-class classifier; --num-classes 3 would add a randomly initialised"):
        load_model("deit_tiny_distilled_patch16_224", checkpoint=path, num_classes=3, model_args=TINY | args)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_dinov2_original_release_with_registers(tmp_path: Path, suffix: str) -> None:
    args = {"img_size": 56, "patch_size": 14}
    model = source("vit_small_patch14_reg4_dinov2", **args)
    path = tmp_path / f"dinov2_reg4{suffix}"
    state = dinov2_original(model)
    torch.save(state, path) if suffix == ".pth" else safetensors.torch.save_file(state, path)
    loaded = load_model("vit_small_patch14_reg4_dinov2", checkpoint=path, model_args=TINY | args)
    assert loaded.num_classes == 0 and loaded.source == f"checkpoint {path}"
    assert max_diff(loaded.model, model, (56, 56)) < 1e-5


def test_openai_clip_visual_tower(tmp_path: Path) -> None:
    args = {"img_size": 64, "patch_size": 32}
    model = source("vit_base_patch32_clip_quickgelu_224", num_classes=24, **args)
    with torch.no_grad():
        model.head.bias.zero_()  # CLIP's projection has no bias
    path = tmp_path / "ViT-B-32.pt"
    torch.save(openai_clip(model), path)
    loaded = load_model("vit_base_patch32_clip_quickgelu_224", checkpoint=path, model_args=TINY | args)
    assert loaded.num_classes == 24  # the projection's width, read from the converted weights
    assert max_diff(loaded.model, model, (64, 64)) < 1e-5


def test_deit3_original_layer_scale_names(tmp_path: Path) -> None:
    """DeiT-3 releases name layer-scales ``gamma_1``/``gamma_2``: deit's filter renames them."""
    args = {"img_size": 32, "patch_size": 8}
    model = source("deit3_small_patch16_224", num_classes=4, **args)
    path = tmp_path / "deit3.pth"
    torch.save({re.sub(r"ls(\d)\.gamma", r"gamma_\1", k): v for k, v in model.state_dict().items()}, path)
    loaded = load_model("deit3_small_patch16_224", checkpoint=path, model_args=TINY | args)
    assert loaded.num_classes == 4 and max_diff(loaded.model, model, (32, 32)) == 0.0


def test_big_vision_npz(tmp_path: Path) -> None:
    model = source("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=7)
    path = write_big_vision_npz(model, tmp_path / "ViT-Ti_8.npz")
    loaded = load_model("vit_tiny_patch16_224", checkpoint=path, model_args=TINY | {"img_size": 32, "patch_size": 8})
    assert loaded.num_classes == 7
    assert max_diff(loaded.model, model, (32, 32)) < 1e-5
    with pytest.raises(UserError, match="holds 2 encoder blocks; vit_tiny_patch16_224 as configured has 3"):
        load_model("vit_tiny_patch16_224", checkpoint=path, model_args=TINY | {"depth": 3, "patch_size": 8})


def test_position_embedding_resampled_to_another_img_size(tmp_path: Path) -> None:
    model = source("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
    path = tmp_path / "vit32.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    args = TINY | {"img_size": 48, "patch_size": 8}
    loaded = load_model("vit_tiny_patch16_224", checkpoint=path, model_args=args)
    assert loaded.input_size == (3, 48, 48) and loaded.model.pos_embed.shape == (1, 37, 32)
    overlay = {"file": str(path), "num_classes": 3, "custom_load": False}
    timm_own = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **args)
    assert max_diff(loaded.model, timm_own.eval(), (48, 48)) == 0.0


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    model = source("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.1.mlp.fc1.weight"][3, 4] = float("nan")
    safetensors.torch.save_file(state, tmp_path / "nan.safetensors")
    args = TINY | {"img_size": 32, "patch_size": 8}
    with pytest.raises(UserError, match=r"tensor blocks\.1\.mlp\.fc1\.weight \(128, 32\) holds 1 NaN or infinite"):
        load_model("vit_tiny_patch16_224", checkpoint=tmp_path / "nan.safetensors", model_args=args)
    npz = write_big_vision_npz(model, tmp_path / "inf.npz")
    arrays = dict(np.load(npz))
    arrays["Transformer/encoder_norm/scale"][0] = np.inf
    np.savez(npz, **arrays)
    with pytest.raises(UserError, match="tensor Transformer/encoder_norm/scale .* holds 1 NaN or infinite value"):
        load_model("vit_tiny_patch16_224", checkpoint=npz, model_args=args)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("swin_tiny_patch4_window7_224", "is a swin_transformer model, not a plain ViT"),
        ("beit_base_patch16_224", "is a beit model, not a plain ViT"),
        ("eva02_base_patch14_224", "is a eva model, not a plain ViT"),
        ("cait_s24_224", "is a cait model, not a plain ViT"),
        ("vit_base_r50_s16_224", "is a vision_transformer_hybrid model"),
        ("vit_small_patch16_18x2_224", "block 0 is a ParallelThingsBlock, not timm's Block"),
        ("vit_giant_patch14_dinov2", None),  # a plain ViT (SwiGLU MLP): built, not refused
    ],
)
def test_architectures_that_are_not_plain_vits_are_refused_at_once(name: str, reason: str | None) -> None:
    start = time.perf_counter()
    if reason is None:
        assert load_model(name, pretrained=False, model_args=TINY | {"embed_dim": 48}).num_classes == 0
        return
    with pytest.raises(UserError, match=f"{reason}.*vitslim supports plain timm Vision Transformers") as info:
        load_model(name, pretrained=False)
    assert "Hugging Face ViT, DeiT and DINOv2 folders" in str(info.value)
    assert time.perf_counter() - start < 10  # nothing built but a meta-device probe
