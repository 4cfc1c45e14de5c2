"""Building a timm ViT with weights from a local file, the way timm loads its pretrained files.

A state dict (safetensors or a ``weights_only`` torch file) goes to ``timm.create_model`` as
``pretrained_cfg_overlay={"state_dict": ...}``: timm runs the model's own ``checkpoint_filter_fn``
(original DINOv2, OpenAI/OpenCLIP formats; position embeddings resampled to the model's grid)
and loads strictly. Before that, the same conversion runs against a model built on the ``meta``
device, so the classifier size is read from the converted weights (every head of a distilled
model) and a checkpoint that does not fit is refused naming its keys, in well under a second.
A big_vision/JAX ``.npz`` goes through the model's own ``load_pretrained``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from vitslim.errors import UserError
from vitslim.models.checkpoints import NPZ_SUFFIX, head_size, read_checkpoint, read_npz

RANDOM_INIT_SEED = 0


def create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with seeded random initialisation; creation errors become UserErrors."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random weights are the same on every run
            return timm.create_model(name, **kwargs)
    except Exception as exc:  # download, config or (after our own fit check) timm load failures
        if kwargs.get("pretrained") and "pretrained_cfg_overlay" not in kwargs:
            raise UserError(
                f"could not get pretrained weights for {name} ({type(exc).__name__}: {exc}); "
                "pass --checkpoint FILE, or --random-init for random weights"
            ) from None
        reason = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
        raise UserError(f"could not create timm model {name}: {reason[:400] or type(exc).__name__}") from None


def choose_num_classes(requested: int | None, found: int, label: str) -> int:
    """The classifier size: the checkpoint's, or 0 (its backbone) when asked; never a random head."""
    if requested is None or requested == found or requested == 0:
        return found if requested is None else requested
    has = f"a {found}-class classifier" if found else "no classifier"
    raise UserError(
        f"{label} has {has}; --num-classes {requested} would add a randomly initialised head "
        "(omit --num-classes, or give 0 for the backbone)"
    )


def _preview(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def fit_problems(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``expected`` shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    return [
        f"{what} ({len(keys)}): {_preview(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]


def load_fitting_state(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """Load ``state`` strictly, or raise a UserError naming the keys that do not fit."""
    problems = fit_problems({k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
    if problems:
        raise UserError(f"{label} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or "head"
    return (names,) if isinstance(names, str) else tuple(names)


def load_state_file(
    name: str, path: Path, probe: nn.Module, num_classes: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    """``name`` with the weights of a safetensors/torch file, through timm's own conversion;
    ``probe`` (the same model on the meta device) gets the checkpoint's classifier size."""
    label = f"checkpoint {path}"
    raw = read_checkpoint(path)
    deit = timm.models.model_entrypoint(name.split(".", 1)[0]).__module__ == "timm.models.deit"
    # what timm will load, named as the model names it (deit's filter also renames DeiT-3 gamma_*)
    converted = checkpoint_filter_fn(dict(raw), probe, adapt_layer_scale=deit)
    classifiers = _classifier_names(probe)
    found = head_size(converted, classifiers)
    classes = choose_num_classes(num_classes, found, label)
    if classes != found:  # the backbone of a classifier: timm drops the head's weights
        converted = {k: v for k, v in converted.items() if k.rsplit(".", 1)[0] not in classifiers}
    probe.reset_classifier(classes)
    problems = fit_problems({k: tuple(v.shape) for k, v in probe.state_dict().items()}, converted)
    if problems:
        raise UserError(f"{label} does not fit {type(probe).__name__} {name}: " + "; ".join(problems))
    overlay = {"state_dict": raw, "num_classes": found}
    return create(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=classes, **kwargs)


def _npz_depth(arrays: dict[str, Any]) -> int | None:
    """Encoder blocks in a big_vision/JAX archive (numbered or stacked), None when not found."""
    numbered = {int(m.group(1)) for key in arrays if (m := re.search(r"Transformer/encoderblock_(\d+)/", key))}
    if numbered:
        return max(numbered) + 1
    stacked = [v for k, v in arrays.items() if k.endswith("Transformer/encoderblock/LayerNorm_0/scale")]
    return int(stacked[0].shape[0]) if stacked else None


def load_npz_file(name: str, path: Path, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    """``name`` with the weights of a big_vision/JAX ``.npz``, through the model's ``load_pretrained``.

    That loader skips what it does not find a place for, so the model is filled with NaN first:
    whatever is still NaN afterwards was not in the file, and the file is refused.
    """
    label = f"checkpoint {path}"
    arrays = read_npz(path)
    found = next((int(v.shape[-1]) for k, v in arrays.items() if k.endswith("head/bias")), 0)
    classes = choose_num_classes(num_classes, found, label)
    model = create(name, pretrained=False, num_classes=classes, **kwargs)
    depth = _npz_depth(arrays)
    if depth is not None and depth != len(model.blocks):
        raise UserError(f"{label} holds {depth} encoder blocks; {name} as configured has {len(model.blocks)}")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
        try:
            model.load_pretrained(str(path))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise UserError(f"{label} does not fit {type(model).__name__} {name}: {reason}") from None
    left = [k for k, v in model.state_dict().items() if v.is_floating_point() and torch.isnan(v).any()]
    if left:
        raise UserError(
            f"{label} does not fit {type(model).__name__} {name}: not in the file ({len(left)}): " + _preview(left)
        )
    return model


def load_weights_file(
    name: str, path: Path, probe: nn.Module, num_classes: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    """``name`` with the weights of ``path``: a ``.npz`` archive, or a state-dict file."""
    if path.suffix == NPZ_SUFFIX:
        return load_npz_file(name, path, num_classes, kwargs)
    return load_state_file(name, path, probe, num_classes, kwargs)
