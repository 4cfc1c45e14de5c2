"""Sequential calibration without running the model from its input for every block.

Sequential SparseGPT / GPTQ calibrate block ``i`` on the outputs of blocks ``0..i-1`` as already
changed. Running every calibration batch from the model input up to block ``i`` for each block
costs about ``depth / 2`` full passes; :class:`BlockCursor` keeps each batch's input of the
current block instead, so each block runs twice in all (once to calibrate it, once changed to
feed the next): about two passes. The results are the same: the same blocks run on the same
values, in the same batches.

This needs blocks chained one into the next with nothing else passed between them (timm ViTs:
``self.blocks(x)``). A probe on one image checks that; otherwise, and for stages that are not
blocks, every pass runs the whole model (:func:`~vitslim.compress.quant.calibration.run_until`).
Token-reducing blocks keep working: the token sizes entering the block are kept with each batch.
:class:`BlockRunner` (the pieces: first block inputs, one block, the head) also serves bias correction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from vitslim.compress.quant.calibration import run_until

__all__ = ["BlockCursor", "BlockRunner", "chained_blocks"]


class _Stop(Exception):
    """Ends the pass that captures the first block's inputs."""


class BlockRunner:
    """Runs a timm ViT piecewise on kept block inputs: the first block's inputs, one block, the
    head. The token-reduction state's token sizes are restored before each piece, as the whole
    forward would have them."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        from vitslim.compress.tokens import token_reduction_state  # tokens imports quant, which imports this

        self.state = token_reduction_state(model)

    def inputs(self, batches: Sequence[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        """The first block's input (and token sizes: none yet) for each batch, as the model is now."""
        out: list[tuple[Tensor, Tensor | None]] = []

        def grab(_m: nn.Module, args: tuple) -> None:
            out.append((args[0].detach(), None))
            raise _Stop

        handle = self.model.blocks[0].register_forward_pre_hook(grab)
        try:
            for x in batches:
                with contextlib.suppress(_Stop):
                    self.model(x)
        finally:
            handle.remove()
        return out

    def block(self, index: int, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Block ``index`` on ``x`` entering with token sizes ``size``: its output and the sizes after it."""
        if self.state is not None:
            self.state.size = size
        y = self.model.blocks[index](x)
        return y, None if self.state is None else self.state.size

    def head(self, x: Tensor, size: Tensor | None) -> Tensor:
        """The final norm and head on the last block's output ``x`` (token sizes ``size``)."""
        if self.state is not None:
            self.state.size = size
        try:
            return self.model.forward_head(self.model.norm(x))
        finally:
            if self.state is not None:
                self.state.begin()


def chained_blocks(model: nn.Module, image: Tensor) -> bool:
    """Whether a forward of ``image`` runs ``model.blocks`` in order, each once, each on the
    previous one's output tensor alone (no other arguments)."""
    blocks = list(getattr(model, "blocks", []))
    calls: list[tuple[int, tuple, dict]] = []
    outputs: dict[int, object] = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda _m, a, k, i=i: calls.append((i, a, k)), with_kwargs=True))
        handles.append(block.register_forward_hook(lambda _m, _a, out, i=i: outputs.__setitem__(i, out)))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    if not blocks or [i for i, _a, _k in calls] != list(range(len(blocks))):
        return False
    for i, args, kwargs in calls:
        if len(args) != 1 or any(v is not None for v in kwargs.values()) or not isinstance(outputs.get(i), Tensor):
            return False
        if i > 0 and args[0] is not outputs[i - 1]:
            return False
    return True


class BlockCursor:
    """Calibration ``batches`` run through ``model`` stage by stage (see the module docstring).

    ``stops``: the stage ends of :func:`~vitslim.compress.hessian.calibration_stages`; call
    :meth:`run` with them in order, changing only the layers of the block just run between calls.
    The probe runs here, before the caller's hooks are in place.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Tensor], stops: Iterable[nn.Module | None]) -> None:
        self.model, self.batches = model, list(batches)
        self.blocks = list(getattr(model, "blocks", []))
        block_stage = any(any(stop is b for b in self.blocks) for stop in stops)
        self.chained = block_stage and bool(self.batches) and chained_blocks(model, self.batches[0][:1])
        self.runner = BlockRunner(model)
        self.position = -1  # index of the block whose inputs are kept (-1: none yet)
        self.kept: list[tuple[Tensor, Tensor | None]] = []  # per batch: that block's input, token sizes

    def run(self, stop_after: nn.Module | None, bar) -> None:
        """Run every batch up to the end of ``stop_after`` (None: the whole model), as
        ``run_until`` does, from the kept inputs when ``stop_after`` is a later block."""
        index = next((i for i, b in enumerate(self.blocks) if b is stop_after), None)
        if not self.chained or index is None or index < self.position:
            run_until(self.model, self.batches, stop_after, bar)
            return
        with torch.no_grad():
            if self.position < 0:
                self.kept, self.position = self.runner.inputs(self.batches), 0
            while self.position < index:  # the kept block has changed since it ran: its outputs now
                self.kept = [self.runner.block(self.position, x, size) for x, size in self.kept]
                self.position += 1
            for x, size in self.kept:
                self.runner.block(index, x, size)
                bar.update(1)
        if self.runner.state is not None:
            self.runner.state.begin()
