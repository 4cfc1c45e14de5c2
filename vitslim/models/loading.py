"""Loading a model: the embedded demo, a Hugging Face folder, or a timm ViT name with an optional checkpoint."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch

from vitslim.errors import UserError
from vitslim.models.checkpoints import check_finite
from vitslim.models.hf_folder import is_hf_folder, load_hf_folder
from vitslim.models.loaded import LoadedModel
from vitslim.models.support import check_supported_model, check_supported_name
from vitslim.models.timm_weights import RANDOM_INIT_SEED, create, load_weights_file

DEMO = "demo"


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    model_args: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load ``name`` ("demo", a Hugging Face model folder or a timm model name) in eval mode on the CPU.

    With ``checkpoint`` the weights come from that file (.safetensors, .pth/.pt/.bin read with
    ``weights_only=True``, or a big_vision .npz), loaded the way timm loads its pretrained files;
    ``num_classes`` defaults to the checkpoint's head size (0 keeps only the backbone). Without a
    checkpoint, ``pretrained`` downloads timm's weights; otherwise weights are random.
    ``model_args`` go to ``timm.create_model`` (e.g. ``{"img_size": 384}``). Models other than
    plain timm ViTs are refused before anything is read.
    """
    if name == DEMO:
        if checkpoint is not None or num_classes is not None or model_args:
            raise UserError("--checkpoint, --num-classes and --model-arg cannot be used with the demo model")
        return _load_demo()
    if is_hf_folder(name):
        if checkpoint is not None or num_classes is not None or model_args:
            raise UserError("--checkpoint, --num-classes and --model-arg cannot be used with a Hugging Face folder")
        return load_hf_folder(name)
    arch = _check_timm_name(name)
    check_supported_name(arch)
    kwargs = dict(model_args or {})
    if "num_classes" in kwargs:
        raise UserError("give the classifier size with --num-classes, not --model-arg num_classes")
    probe_kwargs = kwargs if num_classes is None else {**kwargs, "num_classes": num_classes}
    probe = create(name, pretrained=False, device="meta", **probe_kwargs)  # structure only: no memory, no weights
    check_supported_model(probe, name)
    if checkpoint is not None:
        model = load_weights_file(name, Path(checkpoint), probe, num_classes, kwargs)
        source = f"checkpoint {checkpoint}"
    else:
        model = create(name, pretrained=pretrained, **probe_kwargs)
        source = "timm pretrained weights" if pretrained else f"random initialisation (seed {RANDOM_INIT_SEED})"
        check_finite(model.state_dict(), source)
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(img_size, tuple) and len(img_size) == 2:  # timm's config keeps the default size
        config["input_size"] = (config["input_size"][0], *img_size)
    return LoadedModel(model, name, source, config, getattr(model, "num_classes", 0), _label_names(model))


def _load_demo() -> LoadedModel:
    from vitslim.models import demo

    model = demo.create_demo_model()
    return LoadedModel(
        model=model,
        name=DEMO,
        source=f"embedded demo: {demo.ARCH} converted from {demo.BACKBONE_WHEEL}=={demo.BACKBONE_WHEEL_VERSION}, "
        "linear head trained on Fashion-MNIST",
        data_config=dict(demo.DATA_CONFIG),
        num_classes=len(demo.CLASS_NAMES),
        class_names=list(demo.CLASS_NAMES),
        default_calib="fashion-mnist:train",
        default_data="fashion-mnist:test",
    )


def _check_timm_name(name: str) -> str:
    """The architecture of timm model ``name``; a UserError naming close timm models when it is not one."""
    arch = name.split(".", 1)[0]  # "vit_base_patch16_224.augreg_in21k" -> architecture
    if timm.is_model(arch):
        return arch
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; `python -c 'import timm; print(timm.list_models(\"vit*\"))'` lists them"
    )
    raise UserError(f"unknown model '{name}': not 'demo' and not a timm model name{hint}")


def _label_names(model: torch.nn.Module) -> list[str] | None:
    names = getattr(model, "pretrained_cfg", {}).get("label_names")
    return list(names) if names and len(names) == getattr(model, "num_classes", -1) else None
