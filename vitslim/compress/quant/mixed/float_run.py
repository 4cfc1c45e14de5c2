"""The float forward a sensitivity measurement starts from, and the model output recomputed from
any block on, reusing the float block inputs before it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitslim.compress.vit.patching import outer_patch
from vitslim.errors import UserError

__all__ = ["ROWS", "FloatRun", "float_run", "logits_from"]

#: Layer-input rows kept per layer (layer output errors, activation calibration).
ROWS = 2048


@dataclass
class FloatRun:
    """What the float forward leaves behind: block inputs, final features, logits, sampled layer
    inputs and each layer's multiply-accumulates per image."""

    images: Tensor
    block_inputs: list[Tensor]
    features: Tensor
    logits: Tensor
    rows: dict[str, Tensor]
    macs: dict[str, int]
    #: token-reduced models: the token sizes entering each block, then after the last one
    sizes: list[Tensor | None]


def float_run(model: nn.Module, images: Tensor, layers: Sequence[str], seed: int) -> FloatRun:
    """The float forward of ``images`` with the block inputs, features and ``layers``' inputs kept."""
    block_inputs: list[Tensor] = []
    feats: list[Tensor] = []
    rows: dict[str, Tensor] = {}
    macs: dict[str, int] = {}
    gen = torch.Generator().manual_seed(seed)

    def keep_input(name: str, module: nn.Module):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            if isinstance(module, nn.Linear):
                flat = x.reshape(-1, x.shape[-1])
                macs[name] = (flat.shape[0] // images.shape[0]) * module.in_features * module.out_features
                idx = torch.randperm(flat.shape[0], generator=gen)[:ROWS].sort().values
                rows[name] = flat[idx.to(flat.device)].clone()
            else:  # the patch-embedding conv: a few whole images
                rows[name] = x[:4].clone()

        return hook

    def conv_macs(name: str, module: nn.Conv2d):
        def hook(_m: nn.Module, _args: tuple, out: Tensor) -> None:
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs[name] = out[0].numel() * per_out

        return hook

    state = outer_patch(model)
    sizes: list[Tensor | None] = []

    def keep_block_input(_m: nn.Module, args: tuple) -> None:
        block_inputs.append(args[0].detach())
        sizes.append(None if state is None or state.size is None else state.size.clone())

    def keep_features(_m: nn.Module, _args: tuple, out: Tensor) -> None:
        feats.append(out.detach())
        sizes.append(None if state is None or state.size is None else state.size.clone())

    handles = [b.register_forward_pre_hook(keep_block_input) for b in model.blocks]
    handles.append(model.norm.register_forward_hook(keep_features))
    for name in layers:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(keep_input(name, module)))
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_macs(name, module)))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for h in handles:
            h.remove()
    if len(block_inputs) != len(model.blocks) or len(feats) != 1:
        raise UserError("mixed precision needs a plain timm ViT forward (blocks then norm, each run once)")
    return FloatRun(images, block_inputs, feats[0], logits, rows, macs, sizes)


def logits_from(model: nn.Module, run: FloatRun, stage: int) -> Tensor:
    """Model output recomputed from ``stage`` on (earlier blocks' float outputs reused; a
    token-reduced model resumes from the token sizes the float run had there)."""
    if stage < 0:
        return model(run.images)
    state = outer_patch(model)
    start = min(stage, len(model.blocks))
    if state is not None:
        state.begin()
        state.size = run.sizes[start]
    try:
        x = run.features
        if stage < len(model.blocks):
            x = run.block_inputs[stage]
            for blk in model.blocks[stage:]:
                x = blk(x)
            x = model.norm(x)
        return model.forward_head(x)
    finally:
        if state is not None:
            state.begin()
