"""Reading weight files safely: safetensors, ``torch.load(weights_only=True)``, NumPy ``.npz``.

Whatever the format, every tensor is checked for NaN and infinite values as it is read, so a
broken checkpoint is refused at load time with the tensor's name, not minutes later in
calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from vitslim.errors import UserError

CHECKPOINT_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
NPZ_SUFFIX = ".npz"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_finite(tensors: dict[str, Any], label: str) -> None:
    """Refuse ``tensors`` (torch or NumPy, by name) when one holds NaN or infinite values."""
    for name, value in tensors.items():
        array = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        if not (array.is_floating_point() or array.is_complex()):
            continue
        bad = int(array.numel() - torch.isfinite(array).sum())
        if bad:
            raise UserError(
                f"{label}: tensor {name} {tuple(array.shape)} holds {bad} NaN or infinite value{'s' * (bad > 1)}; "
                "refusing to load broken weights"
            )


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or .pth/.pt/.bin with ``weights_only=True``.

    Common wrappers (``{"model": ...}``, ``{"state_dict": ...}``) and a ``module.`` prefix
    (DataParallel) are unwrapped; NaN or infinite weights are refused.
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
        raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    for key in CHECKPOINT_WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    check_finite(state, f"checkpoint {path}")
    return state


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a NumPy ``.npz`` archive (big_vision / JAX checkpoints), read without pickle."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    if not arrays:
        raise UserError(f"checkpoint {path} holds no arrays")
    check_finite(arrays, f"checkpoint {path}")
    return arrays


def head_size(state: dict[str, torch.Tensor], classifiers: str | tuple[str, ...] | list[str] | None) -> int:
    """Classes of a timm-named state dict's classifier (0 for a headless one).

    ``classifiers`` is the pretrained config's ``classifier``: a name, or several for models
    with more than one head (``("head", "head_dist")`` for distilled DeiT); the first found counts.
    """
    names = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers or ("head",))
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim == 2:
            return int(weight.shape[0])
    return 0
