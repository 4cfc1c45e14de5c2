"""Loading a model: the embedded demo, or any timm model name with an optional checkpoint."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import timm.data
import torch

from vitslim.errors import UserError

DEMO = "demo"
RANDOM_INIT_SEED = 0
CHECKPOINT_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what is needed to feed and describe it."""

    model: torch.nn.Module
    name: str
    source: str
    data_config: dict[str, Any]
    num_classes: int
    class_names: list[str] | None = None
    default_calib: str | None = None
    default_data: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    model_args: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load ``name`` ("demo" or a timm model name) in eval mode on the CPU.

    With ``checkpoint`` the weights come from that file (.safetensors, or .pth/.pt/.bin read
    with ``weights_only=True``); ``num_classes`` defaults to the checkpoint's head size. Without
    a checkpoint, ``pretrained`` downloads timm's weights; otherwise weights are random.
    ``model_args`` go to ``timm.create_model`` (e.g. ``{"img_size": 384}``).
    """
    if name == DEMO:
        if checkpoint is not None or num_classes is not None or model_args:
            raise UserError("--checkpoint, --num-classes and --model-arg cannot be used with the demo model")
        return _load_demo()
    _check_timm_name(name)
    state = read_checkpoint(checkpoint) if checkpoint is not None else None
    if num_classes is None and state is not None:
        num_classes = _head_size(name, state)
    kwargs = dict(model_args or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    use_pretrained = pretrained and state is None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random weights are the same on every run
            model = timm.create_model(name, pretrained=use_pretrained, **kwargs)
    except Exception as exc:  # download or config failures of a user-chosen model
        if use_pretrained:
            raise UserError(
                f"could not get pretrained weights for {name} ({type(exc).__name__}: {exc}); "
                "pass --checkpoint FILE, or --random-init for random weights"
            ) from None
        raise UserError(f"could not create timm model {name}: {exc}") from None
    if state is not None:
        load_fitting_state(model, state, str(checkpoint))
        source = f"checkpoint {checkpoint}"
    else:
        source = "timm pretrained weights" if use_pretrained else f"random initialisation (seed {RANDOM_INIT_SEED})"
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


def _check_timm_name(name: str) -> None:
    """Raise a UserError naming close timm models when ``name`` is not one."""
    arch = name.split(".", 1)[0]  # "vit_base_patch16_224.augreg_in21k" -> architecture
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; `python -c 'import timm; print(timm.list_models(\"vit*\"))'` lists them"
    )
    raise UserError(f"unknown model '{name}': not 'demo' and not a timm model name{hint}")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or .pth/.pt/.bin with ``weights_only=True``.

    Common wrappers (``{"model": ...}``, ``{"state_dict": ...}``) and a ``module.`` prefix
    (DataParallel) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state: Any = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None
    for key in CHECKPOINT_WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _head_size(name: str, state: dict[str, torch.Tensor]) -> int:
    """Classes of the checkpoint's classifier (0 for a headless checkpoint)."""
    classifier = timm.models.get_pretrained_cfg_value(name.split(".", 1)[0], "classifier") or "head"
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 0


def load_fitting_state(model: torch.nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """Load ``state`` strictly, or raise a UserError naming the keys that do not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    problems = [
        f"{what} ({len(keys)}): {_preview(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    if problems:
        raise UserError(f"{label} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _preview(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def _label_names(model: torch.nn.Module) -> list[str] | None:
    names = getattr(model, "pretrained_cfg", {}).get("label_names")
    return list(names) if names and len(names) == getattr(model, "num_classes", -1) else None
