"""Test helpers: tiny random Hugging Face CLIP and SigLIP models (vision towers and full image-text
models) saved as folders, and the pooled output their timm equivalent must give."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from tests.hf_models import SIZE

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": SIZE,
    "patch_size": 8,
}
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
#: architecture -> (family, config class of the tower, full model)
TOWERS = {
    "CLIPVisionModel": ("clip", "CLIPVisionConfig", False),
    "CLIPVisionModelWithProjection": ("clip", "CLIPVisionConfig", False),
    "CLIPModel": ("clip", "CLIPConfig", True),
    "SiglipVisionModel": ("siglip", "SiglipVisionConfig", False),
    "SiglipModel": ("siglip", "SiglipConfig", True),
}


def _config(architecture: str):
    family, config_class, full = TOWERS[architecture]
    extra = {"projection_dim": 24} if family == "clip" else {}
    if full:
        text = {**TEXT, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        return getattr(transformers, config_class)(vision_config=VISION, text_config=text, **extra)
    if architecture != "CLIPVisionModelWithProjection":
        extra = {}
    return getattr(transformers, config_class)(**VISION, **extra)


def save_hf_tower(architecture: str, folder: Path, seed: int = 0) -> torch.nn.Module:
    """A random ``architecture`` saved with its image processor into ``folder``; returns the model.
    Weights redrawn at unit scale (norms, biases, tokens) or 1/sqrt(fan-in) (matrices)."""
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(_config(architecture)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            matrix = param.ndim >= 2 and not any(part in name for part in ("embedding.weight", "probe"))
            param.normal_(0.0, param[0].numel() ** -0.5 if matrix else 1.0)
    model.save_pretrained(folder)
    if TOWERS[architecture][0] == "clip":
        crop = {"height": SIZE, "width": SIZE}
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size=crop)
    else:
        processor = transformers.SiglipImageProcessor(size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(folder)
    return model


def tower_outputs(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled embedding (as the model defines it) and the patch tokens after the final LayerNorm."""
    modules = dict(model.named_modules())
    clip = any(name.endswith("pre_layrnorm") for name in modules)
    with torch.no_grad():
        if hasattr(model, "get_image_features"):
            pooled = model.get_image_features(pixel_values=images)
            pooled = getattr(pooled, "pooler_output", pooled)
            hidden = model.vision_model(pixel_values=images).last_hidden_state
        else:
            out = model(pixel_values=images)
            pooled = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output
            hidden = out.last_hidden_state
        if clip:  # CLIP leaves its final LayerNorm to the class token
            post = next(module for name, module in modules.items() if name.endswith("post_layernorm"))
            hidden = post(hidden)[:, 1:]
    return pooled, hidden
