"""Hugging Face ViT, DeiT and DINOv2 models (and, through :mod:`vitslim.models.hf_towers`, CLIP and
SigLIP vision towers) as the equivalent timm VisionTransformer.

:func:`timm_model_args` turns a ``config.json`` into ``VisionTransformer`` arguments and
:func:`convert_state_dict` renames the saved weights (the names ``save_pretrained`` writes) to
timm's, so every vitslim stage applies unchanged. Equivalences:

* tokens: ViT/DINOv2 ``[cls, patches]`` + position embeddings over all of them; DeiT
  ``[cls, distillation, patches]`` (timm's distilled model, or a register token when only the
  class token is classified); DINOv2 with registers adds the registers after the position
  embedding (timm ``no_embed_class``: the class token's position is folded into it);
* DINOv2 resamples its position grid to the input at every forward (bicubic, antialiased for the
  register variant): done once here with timm's ``resample_abs_pos_embed`` and the same settings;
* heads: ``classifier`` on the class token; DeiT's two heads averaged (timm distilled); DINOv2's
  on ``[cls, mean of patches]`` (:class:`~vitslim.models.hf_heads.ClassAndMeanPoolViT`); base
  models (``ViTModel``...) give the final LayerNorm's class token, their pooler is not kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import QuickGELU, SwiGLUPacked, resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitslim.errors import UserError
from vitslim.models.hf_heads import ClassAndMeanPoolViT
from vitslim.models.hf_towers import TOWERS, convert_tower_state, tower_model_args

#: architecture -> (model_type, head): none (base model), token, distilled, token_mean
ARCHITECTURES = {
    "ViTModel": ("vit", "none"),
    "ViTForImageClassification": ("vit", "token"),
    "DeiTModel": ("deit", "none"),
    "DeiTForImageClassification": ("deit", "token"),
    "DeiTForImageClassificationWithTeacher": ("deit", "distilled"),
    "Dinov2Model": ("dinov2", "none"),
    "Dinov2ForImageClassification": ("dinov2", "token_mean"),
    "Dinov2WithRegistersModel": ("dinov2_with_registers", "none"),
    "Dinov2WithRegistersForImageClassification": ("dinov2_with_registers", "token_mean"),
    **TOWERS,
}
ACTIVATIONS: dict[str, Any] = {
    "gelu": nn.GELU,
    "gelu_new": partial(nn.GELU, approximate="tanh"),
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}
#: weight-name prefix of the base model inside each task model
BASE_PREFIXES = ("vit.", "deit.", "dinov2_with_registers.", "dinov2.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
#: per-layer names (ViT/DeiT and DINOv2 spellings) -> timm block names; q/k/v are fused into qkv
_LAYER_NAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
}
_LAYER_SCALES = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}


@dataclass(frozen=True)
class HFModel:
    """Which Hugging Face model a folder holds and how timm builds its equivalent."""

    architecture: str
    model_type: str
    head: str

    @property
    def timm_class(self) -> type[VisionTransformer]:
        return {"distilled": VisionTransformerDistilled, "token_mean": ClassAndMeanPoolViT}.get(
            self.head, VisionTransformer
        )

    @property
    def is_tower(self) -> bool:
        """A CLIP or SigLIP vision tower (:mod:`vitslim.models.hf_towers`)."""
        return self.architecture in TOWERS


def identify(config: dict[str, Any], label: str) -> HFModel:
    """The supported architecture named in ``config`` (``architectures``, else ``model_type``)."""
    names = config.get("architectures") or []
    known = [name for name in names if name in ARCHITECTURES]
    if not known and not names:
        model_type = config.get("model_type")
        known = [name for name, (kind, head) in ARCHITECTURES.items() if kind == model_type and head == "none"]
    if not known:
        what = ", ".join(names) or f"model_type {config.get('model_type')!r}"
        raise UserError(f"{label} holds {what}; supported Hugging Face models: {', '.join(ARCHITECTURES)}")
    model_type, head = ARCHITECTURES[known[0]]
    return HFModel(known[0], model_type, head)


def _size(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _mlp_args(config: dict[str, Any], hf: HFModel, dim: int) -> dict[str, Any]:
    """MLP width and activation (DINOv2's SwiGLU packs gate and value in one fc1, as timm's SwiGLUPacked)."""
    if hf.model_type.startswith("dinov2"):
        hidden = int(dim * config.get("mlp_ratio", 4))
        if config.get("use_swiglu_ffn"):
            packed = 2 * ((int(hidden * 2 / 3) + 7) // 8 * 8)
            return {"mlp_ratio": _ratio(packed, dim), "mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
    else:
        hidden = int(config["intermediate_size"])
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise UserError(f"hidden_act {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return {"mlp_ratio": _ratio(hidden, dim), "act_layer": ACTIVATIONS[act]}


def _ratio(hidden: int, dim: int) -> float:
    """An ``mlp_ratio`` that timm turns back into exactly ``hidden`` (``int(dim * ratio)``)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def timm_model_args(config: dict[str, Any], hf: HFModel, img_size: tuple[int, int], num_classes: int) -> dict:
    """Keyword arguments of ``hf.timm_class`` for the model of ``config`` at input ``img_size``."""
    dim = int(config["hidden_size"])
    args: dict[str, Any] = {
        "img_size": img_size,
        "patch_size": _size(config["patch_size"]),
        "in_chans": int(config.get("num_channels", 3)),
        "embed_dim": dim,
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "norm_layer": partial(nn.LayerNorm, eps=float(config.get("layer_norm_eps", 1e-12))),
        "num_classes": num_classes,
        "global_pool": "token",
        **_mlp_args(config, hf, dim),
    }
    if hf.is_tower:
        args.update(tower_model_args(config, hf.model_type, hf.head))
        if hf.head == "projection":
            args["num_classes"] = int(config["projection_dim"])
    if hf.model_type.startswith("dinov2"):
        args["init_values"] = float(config.get("layerscale_value", 1.0))
    if hf.model_type == "dinov2_with_registers":
        args.update(reg_tokens=int(config.get("num_register_tokens", 0)), no_embed_class=True)
    if hf.model_type == "deit" and hf.head != "distilled":
        args["reg_tokens"] = 1  # the distillation token sits where timm puts a register token
    return args


def _strip_base_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in BASE_PREFIXES:
        if any(k.startswith(prefix + "embeddings.") for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def _layer_weights(layers: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """timm block weights from each layer's Hugging Face weights (query/key/value fused into qkv)."""
    out: dict[str, torch.Tensor] = {}
    for i, weights in sorted(layers.items()):
        for suffix in ("weight", "bias"):
            parts = [weights.pop(f"attention.attention.{role}.{suffix}", None) for role in ("query", "key", "value")]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)
        for name, value in weights.items():
            if name in _LAYER_SCALES:
                out[f"blocks.{i}.{_LAYER_SCALES[name]}"] = value
                continue
            base, _, suffix = name.rpartition(".")
            if base not in _LAYER_NAMES:
                raise UserError(f"unexpected weight encoder.layer.{i}.{name} for this architecture")
            out[f"blocks.{i}.{_LAYER_NAMES[base]}.{suffix}"] = value
    return out


def _embeddings(emb: dict[str, torch.Tensor], hf: HFModel, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Class/distillation/register tokens, patch projection and the position grid resampled to ``grid``."""
    out = {
        "patch_embed.proj.weight": emb.pop("patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": emb.pop("patch_embeddings.projection.bias"),
    }
    pos = emb.pop("position_embeddings")
    cls = emb.pop("cls_token")
    emb.pop("mask_token", None)  # masked-image pretraining only
    extra = ("dist_token" if hf.head == "distilled" else "reg_token") if "distillation_token" in emb else None
    if extra is not None:
        out[extra] = emb.pop("distillation_token")
    prefix = 2 if extra is not None else 1
    if hf.model_type == "dinov2_with_registers":
        cls, pos, prefix = cls + pos[:, :1], pos[:, 1:], 0
        out["reg_token"] = emb.pop("register_tokens")
    side = math.isqrt(pos.shape[1] - prefix)
    if side * side == pos.shape[1] - prefix and (side, side) != grid:  # a square grid, run at another size
        antialias = hf.model_type == "dinov2_with_registers"  # what each model's own resampling does
        pos = resample_abs_pos_embed(
            pos, list(grid), [side, side], num_prefix_tokens=prefix, interpolation="bicubic", antialias=antialias
        )
    out.update(cls_token=cls, pos_embed=pos)
    if emb:
        raise UserError(f"unexpected embedding weights: {', '.join(sorted(emb))}")
    return out


def convert_state_dict(state: dict[str, torch.Tensor], hf: HFModel, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """timm weights for ``hf``'s model with a ``grid`` of patches, from the folder's saved weights.

    The base model's pooler (``pooler.dense``) is dropped; any other unknown weight is refused.
    """
    if hf.is_tower:
        return convert_tower_state(state, hf.model_type, hf.head)
    state = _strip_base_prefix(state)
    embeddings: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.startswith("embeddings."):
            embeddings[name.removeprefix("embeddings.")] = value
        elif match := _LAYER.match(name):
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
        elif name.startswith("layernorm."):
            out["norm." + name.removeprefix("layernorm.")] = value
        elif name.split(".", 1)[0] in _HEADS and hf.head != "none":
            head, _, suffix = name.partition(".")
            out[f"{_HEADS[head]}.{suffix}"] = value
        elif not name.startswith("pooler."):
            raise UserError(f"unexpected weight {name} for {hf.architecture}")
    if "position_embeddings" not in embeddings:
        raise UserError(f"no embeddings.position_embeddings among the weights: not a {hf.architecture}")
    return {**_embeddings(embeddings, hf, grid), **_layer_weights(layers), **out}
