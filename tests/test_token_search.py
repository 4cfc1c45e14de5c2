"""Schedule search under a FLOPs budget (vitslim.compress.tokens.search) and ``vitslim search-tokens``."""

from __future__ import annotations

import time

import pytest
import torch
from click.testing import CliRunner

from tests.helpers import write_class_folder
from tests.token_models import IMG, images, make, run
from vitslim.compress.tokens import (
    TokenConfigError,
    TokenMergeConfig,
    TokenPruneMergeConfig,
    apply_token_reduction,
    estimate_flops,
    remove_token_reduction,
)
from vitslim.compress.tokens.search import search_schedule
from vitslim.errors import UserError
from vitslim.pipeline.token_latency import FLOPS_RANGE, LatencyTarget, next_flops_ratio, search_latency
from vitslim.runtimes import RUNTIMES, Deployed, Runtime, Timed


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


# --------------------------------------------------------------------------- latency budget


class FlopsRuntime(Runtime):
    """A toy runtime whose calls sleep 4 ms plus 16 ms times the model's block FLOPs ratio: the
    latency ratio of a reduction is (1 + 4 * FLOPs ratio) / 5, known in advance."""

    name = "flopsy"
    title = "Flopsy"

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        seconds = 0.004 + 0.016 * estimate_flops(deployed.model)["ratio"]
        return {"": Timed(lambda: time.sleep(seconds), "cpu")}


def test_next_flops_ratio_is_a_secant_step():
    # one point: the line through it and (1, 1); two: the line through both
    for points in ([(0.6, 0.8)], [(0.9, 0.95), (0.5, 0.7)]):
        step = next_flops_ratio(points, 0.65)
        (f0, l0), (f1, l1) = ((1.0, 1.0), *points) if len(points) == 1 else points
        assert l0 + (l1 - l0) / (f1 - f0) * (step - f0) == pytest.approx(0.65)
    assert next_flops_ratio([(0.6, 1.0)], 0.5) == pytest.approx(0.3)  # no latency change: halve
    assert next_flops_ratio([(0.9, 0.99)], 0.1) == FLOPS_RANGE[0]


@pytest.mark.parametrize("method", ["tome", "prunemerge"])
def test_latency_search_meets_a_measured_budget(method):
    model = make("vit", depth=4)
    batches = [images(4, seed=3)]
    budget = 0.8  # FLOPs 0.75 at most; the first guess (FLOPs 0.8) measures about 0.84
    with RUNTIMES.registered(FlopsRuntime.name, FlopsRuntime()):
        found = search_latency(
            model, batches, method, budget, LatencyTarget("flopsy", runs=5, warmup=1), (3, IMG, IMG), max_evals=4
        )
        summary = found.summary()
    assert len(found.timed) >= 2 and found.timed[0].flops_budget == budget
    assert found.timed[0].latency_ratio > budget  # measured, not assumed
    within = [m for m in found.timed if m.latency_ratio <= budget]
    assert found.best in within and found.best.candidate.divergence == min(m.candidate.divergence for m in within)
    expected = (1 + 4 * found.best.candidate.flops_ratio) / 5
    assert found.best.latency_ratio == pytest.approx(expected, abs=0.1)  # sleeps overshoot a little
    assert "latency <= 0.8" in summary and "Flopsy b1" in summary
    # the chosen config is explicit: applied again it has the FLOPs the search measured
    assert estimate_flops(model, found.best.candidate.config)["ratio"] == pytest.approx(
        found.best.candidate.flops_ratio
    )


def test_latency_search_says_when_the_budget_is_not_met():
    with RUNTIMES.registered(FlopsRuntime.name, FlopsRuntime()), pytest.raises(UserError, match="measured"):
        search_latency(
            make("vit", depth=4), [images(2)], "tome", 0.5, LatencyTarget("flopsy", runs=5, warmup=0), (3, IMG, IMG),
            max_evals=2, max_timings=1,
        )  # fmt: skip


def test_cli_latency_budget_writes_the_measured_schedule(tmp_path):
    from vitslim.cli import cli
    from vitslim.recipes import load_recipe

    calib = write_class_folder(tmp_path / "calib", per_class=2)
    out = tmp_path / "fast.yaml"
    common = [
        "--quiet", "search-tokens", "--model", "vit_tiny_patch16_224", "--random-init", "--num-classes", "10",
        "--model-arg", "depth=3", "--model-arg", "img_size=32", "--model-arg", "patch_size=8",
        "--method", "tome", "--calib", str(calib), "--images", "4", "--max-evals", "2", "--out", str(out),
    ]  # fmt: skip
    with RUNTIMES.registered(FlopsRuntime.name, FlopsRuntime()):
        result = CliRunner().invoke(cli, [*common, "--latency-ratio", "0.9", "--runtime", "flopsy", "--threads", "1"])
        assert result.exit_code == 0, result.output
        both = CliRunner().invoke(cli, [*common, "--latency-ratio", "0.9", "--flops-ratio", "0.7"])
    assert both.exit_code != 0 and "one budget" in both.output and not (tmp_path / "x.yaml").exists()
    assert "latency <= 0.9" in out.read_text()
    tokens = load_recipe(out).stages["tokens"]
    assert isinstance(tokens, TokenMergeConfig) and tokens.describe() in result.output
