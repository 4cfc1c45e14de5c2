"""Empirical bias correction of quantized layers (Nagel et al., ICCV 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.2, its empirical variant).

A quantized layer's output error is not zero-mean: the logarithmic quantizers round in the log
domain, clipping trims one tail more than the other, and the errors of earlier layers propagate.
For every quantized Linear / Conv2d with a bias, in execution order, the mean of its output over
the calibration tokens in the quantized model (earlier layers already corrected) minus the same
mean in the float model is subtracted from its bias: afterwards each layer's output has the float
model's mean on the calibration data.

Cost: one float pass; layers before the blocks one quantized pass each (stopping after the layer);
then each block runs from its cached quantized input once per layer (stopping after that layer)
and once more for the next block's input; the head last. About four passes' time on a ViT.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitslim.compress.calibration.block_cursor import BlockRunner
from vitslim.errors import UserError

from .placement import quantization_disabled

__all__ = ["correctable_layers", "reference_means", "bias_correct_", "output_means"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class _Stop(Exception):
    """Ends a pass right after the layer being measured."""


def correctable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and Conv2d layers with a bias and a quantized weight or input, by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        and m.bias is not None
        and (m._modules.get("weight_quant") is not None or m._modules.get("input_quant") is not None)
    }


@contextlib.contextmanager
def output_means(layers: Mapping[str, nn.Module], *, stop: bool = False) -> Iterator[dict[str, Tensor]]:
    """While active, forward hooks add up each layer's output per channel (float64); on exit the
    yielded dict maps each layer that ran to its mean output channel vector. ``stop``: raise
    ``_Stop`` after the (single) layer has run, so a pass goes no further."""
    sums: dict[str, tuple[Tensor, int]] = {}

    def hook(name: str, module: nn.Module, out: Tensor) -> None:
        axis = 1 if isinstance(module, nn.Conv2d) else -1
        rows = out.detach().movedim(axis, -1).reshape(-1, out.shape[axis]).double()
        total, count = sums.get(name, (0.0, 0))
        sums[name] = (rows.sum(0) + total, count + rows.shape[0])
        if stop:
            raise _Stop

    handles = [
        m.register_forward_hook(lambda mod, _args, out, name=name: hook(name, mod, out)) for name, m in layers.items()
    ]
    means: dict[str, Tensor] = {}
    try:
        yield means
    finally:
        for handle in handles:
            handle.remove()
        means.update({name: total / count for name, (total, count) in sums.items()})


def _measure(name: str, layer: nn.Module, calls: Iterable[Callable[[], object]]) -> Tensor | None:
    """Mean output of ``layer`` over ``calls`` (passes that stop right after it); None if it never ran."""
    with output_means({name: layer}, stop=True) as means:
        for call in calls:
            with contextlib.suppress(_Stop):
                call()
    return means.get(name)


def reference_means(model: nn.Module, batches: Sequence[Tensor]) -> dict[str, Tensor]:
    """Mean output channel vector of every :func:`correctable_layers` layer in the float model
    (every quantization point off) on ``batches``, in execution order."""
    with torch.no_grad(), quantization_disabled(model), output_means(correctable_layers(model)) as means:
        for x in batches:
            model(x)
    return means


def _stages(names: Sequence[str], depth: int) -> dict[int, list[str]]:
    """Layers (in execution order) per stage: -1 before the blocks, the block index, ``depth`` after."""
    staged: dict[int, list[str]] = {}
    seen_block = False
    for name in names:
        found = _BLOCK.match(name)
        seen_block = seen_block or found is not None
        stage = int(found[1]) if found and int(found[1]) < depth else (depth if seen_block else -1)
        staged.setdefault(stage, []).append(name)
    return staged


@torch.no_grad()
def bias_correct_(
    model: nn.Module,
    batches: Sequence[Tensor],
    reference: Mapping[str, Tensor] | None = None,
    *,
    progress: bool = True,
) -> dict[str, float]:
    """Correct the biases of ``model``'s quantized layers in place on ``batches`` (see the module
    docstring) towards ``reference`` (:func:`reference_means` of the float model, taken before
    anything changed its weights, e.g. GPTQ; ``None``: taken now with every point off). Returns
    per layer the mean absolute change of its bias."""
    layers = correctable_layers(model)
    if not layers or not batches:
        return {}
    if not isinstance(getattr(model, "blocks", None), nn.Sequential) or not hasattr(model, "forward_head"):
        raise UserError("bias correction needs a timm ViT (blocks, norm and forward_head)")
    runner = BlockRunner(model)
    depth = len(model.blocks)
    reference = reference_means(model, batches) if reference is None else reference
    staged = _stages([name for name in reference if name in layers], depth)
    changes: dict[str, float] = {}

    def correct(name: str, calls: list[Callable[[], object]]) -> None:
        mean = _measure(name, layers[name], calls)
        if mean is not None:
            shift = (mean - reference[name]).to(layers[name].bias.dtype)
            layers[name].bias.sub_(shift)
            changes[name] = float(shift.abs().mean())
        bar.update(1)

    with tqdm(total=sum(map(len, staged.values())), desc="bias correction", disable=not progress, leave=False) as bar:
        for name in staged.get(-1, []):
            correct(name, [partial(model, x) for x in batches])
        cache = runner.inputs(batches)
        for index in range(depth):
            for name in staged.get(index, []):
                correct(name, [partial(runner.block, index, x, size) for x, size in cache])
            cache = [runner.block(index, x, size) for x, size in cache]
        for name in staged.get(depth, []):
            correct(name, [partial(runner.head, x, size) for x, size in cache])
    return changes
