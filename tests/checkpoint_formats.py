"""Test helpers: a timm ViT's weights written the way other projects publish them.

Each writer is the inverse of a conversion timm applies when it loads a pretrained file (its
``checkpoint_filter_fn`` and big_vision ``.npz`` loader), written from the published layouts:
loading the result must give back the timm model exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def dinov2_original(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of Meta's DINOv2 releases: a mask token and, for register models, the class
    token's position inside ``pos_embed`` and the registers as ``register_tokens``."""
    state = dict(model.state_dict())
    state["mask_token"] = torch.zeros(1, model.embed_dim)
    if "reg_token" in state:
        cls_pos = 0.02 * torch.randn(1, 1, model.embed_dim, generator=torch.Generator().manual_seed(seed))
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos
    return state


def openai_clip(model: nn.Module) -> dict[str, torch.Tensor]:
    """An OpenAI CLIP checkpoint's visual tower (``visual.*``): fused ``in_proj``, ``ln_*`` norms,
    ``c_fc``/``c_proj`` MLP and the output projection ``proj`` in place of a biased head."""
    out = {
        "visual.conv1.weight": model.patch_embed.proj.weight,
        "visual.class_embedding": model.cls_token[0, 0],
        "visual.positional_embedding": model.pos_embed[0],
        "visual.ln_pre.weight": model.norm_pre.weight,
        "visual.ln_pre.bias": model.norm_pre.bias,
        "visual.ln_post.weight": model.norm.weight,
        "visual.ln_post.bias": model.norm.bias,
        "visual.proj": model.head.weight.T,
    }
    names = {
        "norm1": "ln_1",
        "norm2": "ln_2",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i, block in enumerate(model.blocks):
        for name, value in block.state_dict().items():
            for timm_name, clip_name in names.items():
                if name.startswith(timm_name):
                    out[f"visual.transformer.resblocks.{i}.{clip_name}{name[len(timm_name) :]}"] = value
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def write_big_vision_npz(model: nn.Module, path: Path) -> Path:
    """A JAX/Flax ViT checkpoint (``Transformer/encoderblock_<i>/...``, HWIO and (in, out) kernels,
    per-head attention kernels) of a plain class-token ViT with a linear head."""
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    arrays = {
        "embedding/kernel": _np(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
        "embedding/bias": _np(model.patch_embed.proj.bias),
        "cls": _np(model.cls_token),
        "Transformer/posembed_input/pos_embedding": _np(model.pos_embed),
        "Transformer/encoder_norm/scale": _np(model.norm.weight),
        "Transformer/encoder_norm/bias": _np(model.norm.bias),
        "head/kernel": _np(model.head.weight.T),
        "head/bias": _np(model.head.bias),
    }
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = block.attn.qkv.weight.chunk(3), block.attn.qkv.bias.chunk(3)
        for role, w, b in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            arrays[f"{mha}{role}/kernel"] = _np(w.T.reshape(dim, heads, -1))
            arrays[f"{mha}{role}/bias"] = _np(b.reshape(heads, -1))
        arrays[f"{mha}out/kernel"] = _np(block.attn.proj.weight.reshape(dim, heads, -1).permute(1, 2, 0))
        arrays[f"{mha}out/bias"] = _np(block.attn.proj.bias)
        for norm, ln in ((block.norm1, "LayerNorm_0"), (block.norm2, "LayerNorm_2")):
            arrays[f"{p}{ln}/scale"], arrays[f"{p}{ln}/bias"] = _np(norm.weight), _np(norm.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            arrays[f"{p}MlpBlock_3/Dense_{r}/kernel"] = _np(fc.weight.T)
            arrays[f"{p}MlpBlock_3/Dense_{r}/bias"] = _np(fc.bias)
    np.savez(path, **arrays)
    return path
