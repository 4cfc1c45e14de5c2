"""Test helpers: tiny random Hugging Face transformers models saved as folders (transformers is a
test dependency only; vitslim reads the folders without it)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

SIZE = 32
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "num_labels": 3}
LABELS = {0: "cat", 1: "dog", 2: "bird"}


def _processor(model_type: str):
    """The image processor each family ships with: ViT squashes, DeiT squashes then crops,
    DINOv2 resizes the shortest edge then crops."""
    if model_type == "vit":
        return transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    crop = {"height": SIZE, "width": SIZE}
    if model_type == "deit":
        return transformers.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size=crop)
    return transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size=crop)


#: architecture -> (config class, extra config): DINOv2 trained at 56 px (a 7x7 grid run at 4x4)
ARCHITECTURES = {
    "ViTModel": ("ViTConfig", {"intermediate_size": 64, "image_size": SIZE}),
    "ViTForImageClassification": ("ViTConfig", {"intermediate_size": 64, "image_size": SIZE}),
    "DeiTModel": ("DeiTConfig", {"intermediate_size": 64, "image_size": SIZE}),
    "DeiTForImageClassification": ("DeiTConfig", {"intermediate_size": 64, "image_size": SIZE}),
    "DeiTForImageClassificationWithTeacher": ("DeiTConfig", {"intermediate_size": 64, "image_size": SIZE}),
    "Dinov2Model": ("Dinov2Config", {"image_size": 56}),
    "Dinov2ForImageClassification": ("Dinov2Config", {"image_size": 56, "use_swiglu_ffn": True}),
    "Dinov2WithRegistersModel": ("Dinov2WithRegistersConfig", {"image_size": 56, "num_register_tokens": 2}),
    "Dinov2WithRegistersForImageClassification": ("Dinov2WithRegistersConfig", {"image_size": 56}),
}


def save_hf_model(architecture: str, folder: Path, seed: int = 0) -> torch.nn.Module:
    """A random ``architecture`` saved with its image processor into ``folder``; returns the model.

    Every weight is redrawn, matrices at std 1/sqrt(fan-in), the rest (tokens, position embeddings,
    norms, biases, layer-scales) at unit scale: the init leaves many near zero or one, where a
    conversion mistake would not show.
    """
    config_class, extra = ARCHITECTURES[architecture]
    config = getattr(transformers, config_class)(**COMMON, **extra, id2label=LABELS)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            matrix = param.ndim >= 2 and not any(part in name for part in ("token", "position"))
            param.normal_(0.0, param[0].numel() ** -0.5 if matrix else 1.0)
    model.save_pretrained(folder)
    _processor(config.model_type).save_pretrained(folder)
    return model


def hf_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the timm equivalent outputs: logits, or the final LayerNorm's class token."""
    with torch.no_grad():
        out = model(pixel_values=images)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state[:, 0]
