"""Schedule search under a FLOPs budget (vitslim.compress.tokens.search) and ``vitslim search-tokens``."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from tests.helpers import write_class_folder
from tests.token_models import images, make, run
from vitslim.compress.tokens import (
    TokenConfigError,
    TokenMergeConfig,
    TokenPruneMergeConfig,
    apply_token_reduction,
    estimate_flops,
    remove_token_reduction,
)
from vitslim.compress.tokens.search import search_schedule


def _kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    logp_ref, logp = ref.log_softmax(-1), out.log_softmax(-1)
    return float((logp_ref.exp() * (logp_ref - logp)).sum(-1).mean())


@pytest.mark.parametrize("method", ["tome", "prunemerge"])
def test_search_meets_the_budget_and_scores_like_a_full_forward(method):
    model = make("vit", depth=4)
    batches = [images(6, seed=3), images(4, seed=4)]
    result = search_schedule(model, batches, method, 0.6, max_evals=6)
    assert 1 < len(result.tried) <= 6 and result.images == 10
    best = result.best
    assert best.divergence == min(c.divergence for c in result.tried)
    assert all(c.flops_ratio <= 0.6 for c in result.tried)
    assert isinstance(best.config, TokenMergeConfig if method == "tome" else TokenPruneMergeConfig)
    assert estimate_flops(model, best.config)["ratio"] == pytest.approx(best.flops_ratio)
    # the cached unreduced prefix gives what a whole forward of the reduced model gives
    x = torch.cat(batches)
    ref = run(model, x)
    for cand in result.tried[:3]:
        apply_token_reduction(model, cand.config)
        out = run(model, x)
        remove_token_reduction(model)
        assert cand.divergence == pytest.approx(_kl(ref, out), rel=1e-4, abs=1e-7)
        assert cand.agreement == float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    assert torch.equal(run(model, x), ref)  # the model searched on is left as it was


def test_search_mistakes():
    model = make("vit", depth=4)
    with pytest.raises(TokenConfigError, match="supports"):
        search_schedule(model, [images(2)], "evit", 0.6)
    with pytest.raises(TokenConfigError, match="flops_ratio"):
        search_schedule(model, [images(2)], "tome", 1.5)


def test_cli_writes_a_recipe_that_reruns_exactly(tmp_path):
    from vitslim.cli import cli
    from vitslim.recipes import load_recipe

    calib = write_class_folder(tmp_path / "calib", per_class=2)
    out = tmp_path / "searched.yaml"
    args = [
        "--quiet", "search-tokens", "--model", "vit_tiny_patch16_224", "--random-init", "--num-classes", "10",
        "--model-arg", "depth=3", "--model-arg", "img_size=32", "--model-arg", "patch_size=8",
        "--method", "prunemerge", "--flops-ratio", "0.7", "--calib", str(calib), "--images", "4",
        "--max-evals", "3", "--recipe", "w8a8", "--class-token-last-block", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# Written by: vitslim") and "prunemerge searched under block FLOPs <= 0.7" in text
    recipe = load_recipe(out)
    assert set(recipe.stages) == {"tokens", "quant"}  # the base recipe's quant stage kept
    tokens = recipe.stages["tokens"]
    assert isinstance(tokens, TokenPruneMergeConfig) and tokens.class_token_last_block
    assert tokens.describe() in result.output  # the config printed is the one written
