"""Hugging Face CLIP and SigLIP vision towers as the equivalent timm VisionTransformer.

* CLIP (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, the vision part of ``CLIPModel``):
  a pre-norm ViT (timm ``pre_norm``: LayerNorm after the embeddings, no patch-embedding bias),
  class token, final LayerNorm; the pooled output is the normalised class token, projected by
  ``visual_projection`` when the folder has it (timm's head, a bias-free projection kept as a
  Linear with a zero bias as timm's own CLIP conversion does).
* SigLIP (``SiglipVisionModel``, the vision part of ``SiglipModel``): no class token, final
  LayerNorm on every token, attention-pool head (timm ``global_pool='map'``: HF's probe, fused
  in-projection, LayerNorm and MLP map onto ``attn_pool``'s latent, q/kv, norm and mlp).

SigLIP2's vision tower takes variable-size patch sequences (NaFlex, its position grid resized per
image): it does not map onto a fixed-size ViT and is refused with the other unsupported models.
The patch-token map of both is timm's, after the final LayerNorm.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from torch import nn

from vitslim.errors import UserError

#: architecture -> (tower family, head): none (pooled class token), projection, map (attention pool)
TOWERS = {
    "CLIPVisionModel": ("clip", "none"),
    "CLIPVisionModelWithProjection": ("clip", "projection"),
    "CLIPModel": ("clip", "projection"),
    "SiglipVisionModel": ("siglip", "map"),
    "SiglipModel": ("siglip", "map"),
}
#: the full (image-text) models whose ``config.json`` nests the tower's settings in ``vision_config``
FULL_MODELS = ("CLIPModel", "SiglipModel")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "self_attn.out_proj": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_POOL_NAMES = {
    "head.attention.out_proj": "attn_pool.proj",
    "head.layernorm": "attn_pool.norm",
    "head.mlp.fc1": "attn_pool.mlp.fc1",
    "head.mlp.fc2": "attn_pool.mlp.fc2",
}
#: weights of the full models that belong to the text tower or the image-text similarity
_NOT_VISION = ("text_model.", "text_projection.", "logit_scale", "logit_bias")


def vision_config(config: dict[str, Any], architecture: str) -> dict[str, Any]:
    """The tower's own settings: ``vision_config`` of a full model, else the config itself."""
    if architecture not in FULL_MODELS:
        return config
    nested = config.get("vision_config")
    if not isinstance(nested, dict):
        raise UserError(f"{architecture} config.json has no vision_config")
    return {**nested, "projection_dim": config.get("projection_dim", nested.get("projection_dim"))}


def tower_model_args(config: dict[str, Any], family: str, head: str) -> dict[str, Any]:
    """``VisionTransformer`` arguments particular to a CLIP or SigLIP tower (the rest are a ViT's)."""
    eps = float(config.get("layer_norm_eps", 1e-5))
    args: dict[str, Any] = {"norm_layer": partial(nn.LayerNorm, eps=eps), "qkv_bias": True}
    if family == "clip":
        args.update(pre_norm=True, global_pool="token")
        return args
    if not config.get("vision_use_head", True):
        raise UserError("SigLIP towers without their attention-pool head (vision_use_head false) are not supported")
    args.update(class_token=False, global_pool="map")
    return args


def _pop(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in weights:
        raise UserError(f"weight {name} is missing: not a CLIP/SigLIP vision tower")
    return weights.pop(name)


def _layers(layers: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, weights in sorted(layers.items()):
        for suffix in ("weight", "bias"):
            parts = [_pop(weights, f"self_attn.{role}_proj.{suffix}") for role in "qkv"]
            out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)
        for name, value in weights.items():
            base, _, suffix = name.rpartition(".")
            if base not in _LAYER_NAMES:
                raise UserError(f"unexpected weight encoder.layers.{i}.{name} in a CLIP/SigLIP tower")
            out[f"blocks.{i}.{_LAYER_NAMES[base]}.{suffix}"] = value
    return out


def _embeddings(weights: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    out = {
        "patch_embed.proj.weight": _pop(weights, "embeddings.patch_embedding.weight"),
        "pos_embed": _pop(weights, "embeddings.position_embedding.weight").unsqueeze(0),
    }
    if family == "clip":
        out["cls_token"] = _pop(weights, "embeddings.class_embedding").reshape(1, 1, -1)
        out["norm_pre.weight"] = _pop(weights, "pre_layrnorm.weight")
        out["norm_pre.bias"] = _pop(weights, "pre_layrnorm.bias")
    else:
        out["patch_embed.proj.bias"] = _pop(weights, "embeddings.patch_embedding.bias")
    return out


def _attention_pool(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SigLIP's head: the probe is the latent query, the fused in-projection splits into q and kv."""
    in_weight, in_bias = _pop(weights, "head.attention.in_proj_weight"), _pop(weights, "head.attention.in_proj_bias")
    dim = in_weight.shape[1]
    out = {
        "attn_pool.latent": _pop(weights, "head.probe"),
        "attn_pool.q.weight": in_weight[:dim],
        "attn_pool.q.bias": in_bias[:dim],
        "attn_pool.kv.weight": in_weight[dim:],
        "attn_pool.kv.bias": in_bias[dim:],
    }
    for name in [n for n in weights if n.startswith("head.")]:
        base, _, suffix = name.rpartition(".")
        if base not in _POOL_NAMES:
            raise UserError(f"unexpected weight {name} in a SigLIP attention-pool head")
        out[f"{_POOL_NAMES[base]}.{suffix}"] = weights.pop(name)
    return out


def convert_tower_state(state: dict[str, torch.Tensor], family: str, head: str) -> dict[str, torch.Tensor]:
    """timm weights of a CLIP/SigLIP tower from the folder's weights (a full model's text tower dropped)."""
    weights: dict[str, torch.Tensor] = {}
    projection = None
    for name, value in state.items():
        if name.startswith(_NOT_VISION):
            continue
        if name == "visual_projection.weight":
            projection = value
            continue
        weights[name.removeprefix("vision_model.")] = value
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name in [n for n in weights if _LAYER.match(n)]:
        match = _LAYER.match(name)
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = weights.pop(name)  # type: ignore[union-attr]
    out = {**_embeddings(weights, family), **_layers(layers)}
    out["norm.weight"], out["norm.bias"] = _pop(weights, "post_layernorm.weight"), _pop(weights, "post_layernorm.bias")
    if family == "siglip":
        out.update(_attention_pool(weights))
    if head == "projection":
        if projection is None:
            raise UserError("weight visual_projection.weight is missing: the folder's model has a projection")
        out["head.weight"], out["head.bias"] = projection, torch.zeros(projection.shape[0])
    if weights:
        raise UserError(f"unexpected weights in a {family.upper()} vision tower: {', '.join(sorted(weights)[:5])}")
    return out
