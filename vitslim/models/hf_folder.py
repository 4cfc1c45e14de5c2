"""Loading a Hugging Face transformers model folder (``config.json`` + weights) as a timm ViT.

The folder's weights (``model.safetensors``, ``pytorch_model.bin``, or shards listed in their
``.index.json``) are converted by :mod:`vitslim.models.hf_convert`; preprocessing comes from
``preprocessor_config.json`` (resize, center crop, rescale and normalisation as a timm data
config) and class names from ``id2label``. transformers itself is not needed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vitslim.errors import UserError
from vitslim.models.checkpoints import read_checkpoint
from vitslim.models.hf_convert import HFModel, convert_state_dict, identify, timm_model_args
from vitslim.models.hf_towers import vision_config
from vitslim.models.loaded import LoadedModel
from vitslim.models.timm_weights import RANDOM_INIT_SEED, load_fitting_state

log = logging.getLogger(__name__)
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: PIL resampling filters by the integer a preprocessor config stores
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def is_hf_folder(name: str) -> bool:
    """Whether ``name`` is a folder holding a Hugging Face ``config.json`` (a folder without one is refused)."""
    path = Path(name)
    if not path.is_dir():
        return False
    if not (path / CONFIG).is_file():
        raise UserError(f"folder {path} has no {CONFIG}: not a Hugging Face model folder")
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights: one file, or the shards its ``.index.json`` lists."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_checkpoint(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_checkpoint(folder / shard))
            return state
    raise UserError(f"folder {folder} has no weights ({' or '.join(WEIGHT_FILES)}, or their .index.json)")


def _crop_pct(final: int, scaled: int) -> float:
    """A timm ``crop_pct`` for which ``floor(final / crop_pct)`` is exactly ``scaled``."""
    pct = final / scaled
    while math.floor(final / pct) < scaled:
        pct = math.nextafter(pct, 0.0)
    while math.floor(final / pct) > scaled:
        pct = math.nextafter(pct, 1.0)
    return pct


def _hw(size: dict[str, Any]) -> tuple[int, int]:
    return int(size["height"]), int(size["width"])


def _resize_and_crop(pp: dict[str, Any], label: str) -> dict[str, Any]:
    """``input_size``, ``crop_pct`` and ``crop_mode`` of a timm data config for the processor's resize and crop."""
    size = pp.get("size") or {}
    crop = _hw(pp["crop_size"]) if pp.get("do_center_crop") and pp.get("crop_size") else None
    if not pp.get("do_resize", True):
        raise UserError(f"{label}: do_resize is false; vitslim feeds the model fixed-size images")
    if "height" in size and "width" in size:
        resized = _hw(size)
        final = crop or resized
        if final[0] * resized[1] != final[1] * resized[0]:
            raise UserError(f"{label}: a {final} crop of a {resized} resize is not supported (unequal ratios)")
        return {"input_size": (3, *final), "crop_pct": _crop_pct(final[0], resized[0]), "crop_mode": "squash"}
    if "shortest_edge" in size and crop is not None and crop[0] == crop[1]:
        pct = _crop_pct(crop[0], int(size["shortest_edge"]))
        return {"input_size": (3, *crop), "crop_pct": pct, "crop_mode": "center"}
    raise UserError(
        f"{label}: resize {size} with crop {crop} is not supported (height/width, or shortest edge + square crop)"
    )


def data_config(pp: dict[str, Any], label: str) -> dict[str, Any]:
    """A timm data config doing what a Hugging Face image processor config does."""
    config = _resize_and_crop(pp, label)
    resample = pp.get("resample", 3)
    config["interpolation"] = RESAMPLE.get(resample, resample) if isinstance(resample, int) else str(resample)
    if config["interpolation"] not in RESAMPLE.values():
        raise UserError(f"{label}: resample {resample!r} is not supported")
    # HF: (pixel * rescale - mean) / std; timm: (pixel / 255 - mean') / std'
    factor = 255.0 * (float(pp.get("rescale_factor", 1 / 255)) if pp.get("do_rescale", True) else 1.0)
    normalize = pp.get("do_normalize", True)
    mean = pp.get("image_mean", IMAGENET_DEFAULT_MEAN) if normalize else (0.0, 0.0, 0.0)
    std = pp.get("image_std", IMAGENET_DEFAULT_STD) if normalize else (1.0, 1.0, 1.0)
    config["mean"] = tuple(float(m) / factor for m in mean)
    config["std"] = tuple(float(s) / factor for s in std)
    return config


def _input_config(folder: Path, config: dict[str, Any], hf: HFModel) -> tuple[dict[str, Any], tuple[int, int]]:
    """The data config and the model's input size (ViT/DeiT run at ``image_size``; DINOv2 at the crop)."""
    pp_path = folder / PREPROCESSOR
    image_size = config.get("image_size", 224)
    trained = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(image_size)
    if pp_path.is_file():
        data = data_config(_read_json(pp_path), str(pp_path))
    else:
        log.warning("%s has no %s: resizing to %s with ImageNet mean and std", folder, PREPROCESSOR, trained)
        data = {"input_size": (3, *trained), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "squash"}
        data.update(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    size = tuple(data["input_size"][1:])
    if not hf.model_type.startswith("dinov2") and size != trained:
        raise UserError(f"{folder}: preprocessing gives {size} images but {hf.architecture} takes {trained}")
    return data, size  # type: ignore[return-value]


def _class_names(config: dict[str, Any], num_classes: int) -> list[str] | None:
    labels = config.get("id2label") or {}
    try:
        names = [str(labels[key]) for key in sorted(labels, key=int)]
    except (TypeError, ValueError):
        return None
    return names if len(names) == num_classes and num_classes > 0 else None


def load_hf_folder(name: str) -> LoadedModel:
    """The Hugging Face model in folder ``name`` as the equivalent timm ViT, eval mode, on the CPU."""
    folder = Path(name)
    config = _read_json(folder / CONFIG)
    hf = identify(config, str(folder))
    config = vision_config(config, hf.architecture)
    data, size = _input_config(folder, config, hf)
    state = read_weights(folder)
    head = state.get("classifier.weight", state.get("cls_classifier.weight"))
    num_classes = int(head.shape[0]) if hf.head != "none" and head is not None else 0
    try:
        args = timm_model_args(config, hf, size, num_classes)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{folder / CONFIG} lacks or misstates {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = hf.timm_class(**args)
    label = f"Hugging Face {hf.architecture} weights in {folder}"
    load_fitting_state(model, convert_state_dict(state, hf, model.patch_embed.grid_size), label)
    has_pooler = any(k.startswith(("pooler.", f"{hf.model_type}.pooler.")) for k in state)
    pooler = ", its pooler not kept" if has_pooler else ""
    source = f"Hugging Face {hf.architecture} folder {folder}, converted to timm {type(model).__name__}{pooler}"
    return LoadedModel(model.eval(), str(folder), source, data, num_classes, _class_names(config, num_classes))
