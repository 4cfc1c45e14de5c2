"""Saving a quantized model and loading it onto a fresh model without recalibration.

A directory with two files:

* ``model.safetensors``: the whole state dict (weights, reparameterised if they were, and
  every quantizer's parameters);
* ``quantization.json``: the quantizer config (name, bits, options) and kind of every site,
  the reparameterisations applied (``reparam_record``) and how ``quantize_`` ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from vitslim.compress.vit.patching import unpatched_class
from vitslim.errors import UserError

from .placement import INFO, install_points, is_quantized, quant_points, quantization_info
from .registry import quantizer_from_config
from .reparam import apply_reparam_structure, reparam_record
from .sites import find_sites

__all__ = ["save_quantized", "load_quantized", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "quantization.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "vitslim.quant/1"


def save_quantized(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model``'s quantized state to ``directory`` (created); returns the directory."""
    points = quant_points(model)
    if not points:
        raise UserError("the model is not quantized: nothing to save")
    uncalibrated = [name for name, p in points.items() if not p.quantizer.calibrated]
    if uncalibrated:
        raise UserError(f"uncalibrated quantizers cannot be saved: {uncalibrated[:5]}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cls = unpatched_class(type(model))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "sites": [{"site": name, "kind": p.kind, "quantizer": p.quantizer.config()} for name, p in points.items()],
        "reparam": reparam_record(model),
        "info": quantization_info(model),
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    return out


def load_quantized(model: nn.Module, directory: str | Path) -> nn.Module:
    """Rebuild a saved quantized state on ``model``, a fresh (float, unquantized) instance of the
    same architecture; token reduction may already be applied. Returns ``model``."""
    src = Path(directory)
    if not (src / CONFIG_NAME).is_file() or not (src / WEIGHTS_NAME).is_file():
        raise UserError(f"{src} holds no saved quantized model ({CONFIG_NAME} + {WEIGHTS_NAME})")
    meta = json.loads((src / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{src / CONFIG_NAME}: unsupported format {meta.get('format')!r} (expected {FORMAT!r})")
    if is_quantized(model) or reparam_record(model):
        raise UserError("load_quantized needs a fresh float model (this one is already quantized or reparameterised)")
    sites = {s.name: s for s in find_sites(model)}
    missing = [e["site"] for e in meta["sites"] if e["site"] not in sites]
    if missing:
        raise UserError(f"the saved sites do not exist on this model (another architecture?): {missing[:5]}")
    state = load_file(str(src / WEIGHTS_NAME), device=str(next(model.parameters()).device))
    own = model.state_dict()
    misfits = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
    if misfits:  # checked before the model is touched
        raise UserError(f"the saved state does not fit this model (missing or reshaped: {misfits[:5]})")
    apply_reparam_structure(model, meta["reparam"])
    install_points(model, {sites[e["site"]]: quantizer_from_config(e["quantizer"]) for e in meta["sites"]})
    model.load_state_dict(state, strict=True)
    for p in quant_points(model).values():
        p.enabled = True
    if meta.get("info") is not None:
        model.__dict__[INFO] = meta["info"]
    return model
