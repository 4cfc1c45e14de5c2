"""Sequential calibration from kept block inputs: the same results as whole-model passes, fewer block runs."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import vitslim.compress.calibration.block_cursor as block_cursor
from tests.helpers import images, meaningful_vit, uniform_cfg
from vitslim.compress.calibration.block_cursor import chained_blocks
from vitslim.compress.quant import quantize_
from vitslim.compress.quant.gptq import gptq_
from vitslim.compress.sparsity import SparsityConfig, sparsify_
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction

SPARSEGPT = SparsityConfig("sparsegpt", sequential=True)


def _model(family: str, tokens: bool) -> nn.Module:
    model = meaningful_vit(family, depth=3)
    return apply_token_reduction(model, TokenMergeConfig(r=2)) if tokens else model


def _with_and_without_cursor(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch, step: Callable[[nn.Module], None]
) -> dict[bool, tuple[nn.Module, int]]:
    """``step`` on two copies of ``model``, with the cursor and with whole-model passes only;
    returns each copy and how many times its first block ran."""
    out = {}
    for cursor in (True, False):
        if not cursor:
            monkeypatch.setattr(block_cursor, "chained_blocks", lambda *_args: False)
        work = copy.deepcopy(model)
        calls: list[int] = []
        handle = work.blocks[0].register_forward_hook(lambda *_args, calls=calls: calls.append(1))
        with torch.no_grad():
            step(work)
        handle.remove()
        out[cursor] = work, len(calls)
    return out


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("family", "tokens"), [("vit", False), ("vit", True), ("dinov2_reg", False)])
def test_sequential_sparsegpt_is_unchanged_with_fewer_block_runs(
    family: str, tokens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = list(images(12).split(4))  # three batches
    runs = _with_and_without_cursor(
        _model(family, tokens), monkeypatch, lambda m: sparsify_(m, SPARSEGPT, x, progress=False)
    )
    (with_cursor, calls), (plain, plain_calls) = runs[True], runs[False]
    assert _same_state(with_cursor, plain)
    # whole-model passes run block 0 once per batch and stage (3 x 3); the cursor twice per batch
    # (calibrating it, then feeding block 1), plus the one-image probe
    assert (calls, plain_calls) == (2 * 3 + 1, 3 * 3)


def test_sequential_gptq_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    x = list(images(8).split(4))
    model = quantize_(meaningful_vit(depth=3), uniform_cfg(4, 8), x, progress=False)
    runs = _with_and_without_cursor(model, monkeypatch, lambda m: gptq_(m, x, sequential=True, progress=False))
    assert _same_state(runs[True][0], runs[False][0]) and runs[True][1] < runs[False][1]


class _Scaled(nn.Module):
    """Blocks with something between them: not a chain the cursor may shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x) * 2.0
        return x


def test_chained_blocks_probe() -> None:
    assert chained_blocks(meaningful_vit(), images(1))
    assert chained_blocks(_model("vit", tokens=True), images(1))
    assert not chained_blocks(_Scaled(), torch.randn(1, 4))
    assert not chained_blocks(nn.Linear(4, 4), torch.randn(1, 4))  # no blocks
