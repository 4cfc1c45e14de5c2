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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from vitslim.compress.quant.calibration import run_until
from vitslim.compress.tokens import token_reduction_state

__all__ = ["BlockCursor", "chained_blocks"]


class _Stop(Exception):
    """Ends the pass that captures the first block's inputs."""


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
        self.state = token_reduction_state(model)
        self.position = -1  # index of the block whose inputs are kept (-1: none yet)
        self.inputs: list[Tensor] = []
        self.sizes: list[Tensor | None] = []

    def run(self, stop_after: nn.Module | None, bar) -> None:
        """Run every batch up to the end of ``stop_after`` (None: the whole model), as
        ``run_until`` does, from the kept inputs when ``stop_after`` is a later block."""
        index = next((i for i, b in enumerate(self.blocks) if b is stop_after), None)
        if not self.chained or index is None or index < self.position:
            run_until(self.model, self.batches, stop_after, bar)
            return
        with torch.no_grad():
            if self.position < 0:
                self._capture_first()
            while self.position < index:
                self._advance()
            for b in range(len(self.batches)):
                self._block(index, b)
                bar.update(1)
        if self.state is not None:
            self.state.begin()

    def _capture_first(self) -> None:
        def keep(_m: nn.Module, args: tuple) -> None:
            self.inputs.append(args[0])
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(keep)
        try:
            for x in self.batches:
                with contextlib.suppress(_Stop):
                    self.model(x)
        finally:
            handle.remove()
        self.sizes = [None] * len(self.batches)
        self.position = 0

    def _block(self, index: int, batch: int) -> tuple[Tensor, Tensor | None]:
        """Block ``index`` on batch ``batch``'s kept input: its output and the token sizes after it."""
        if self.state is not None:
            self.state.size = self.sizes[batch]
        out = self.blocks[index](self.inputs[batch])
        return out, None if self.state is None else self.state.size

    def _advance(self) -> None:
        """Replace the kept inputs by the current block's outputs: the next block's inputs."""
        for b in range(len(self.batches)):
            self.inputs[b], self.sizes[b] = self._block(self.position, b)
        self.position += 1
