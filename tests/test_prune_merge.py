"""Prune-and-merge (PPT / DiffRate style) and the last block for the class token only."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import reducing_scatter_nodes
from tests.token_models import IMG, images, make, run
from vitslim.compress.tokens import (
    TokenConfigError,
    TokenMergeConfig,
    TokenPruneMergeConfig,
    apply_token_reduction,
    class_attention_score,
    estimate_flops,
    prune_merge_counts,
    prune_merge_select,
    prune_merge_tokens,
    remove_token_reduction,
    token_config_from_dict,
    tokens_per_layer,
)
from vitslim.errors import UserError

# --------------------------------------------------------------------------- pure functions


def reference_prune_merge(score, metric, x, size, keep, merge, p):
    """Loop reference: rank, keep, merge the next into the most similar kept token, drop the rest."""
    outs_x, outs_s = [], []
    for b in range(x.shape[0]):
        order = sorted(range(x.shape[1] - p), key=lambda i: -score[b, p + i].item())
        kept, merged = order[:keep], order[keep : keep + merge]
        acc_x = {i: x[b, p + i] * size[b, p + i] for i in kept}
        acc_s = {i: size[b, p + i].clone() for i in kept}
        m = F.normalize(metric[b, p:], dim=-1)
        for j in merged:
            sims = torch.stack([m[j] @ m[i] for i in kept])
            i = kept[int(sims.argmax())]
            acc_x[i] = acc_x[i] + x[b, p + j] * size[b, p + j]
            acc_s[i] = acc_s[i] + size[b, p + j]
        outs_x.append(torch.cat([x[b, :p], torch.stack([acc_x[i] / acc_s[i] for i in kept])]))
        outs_s.append(torch.cat([size[b, :p], torch.stack([acc_s[i] for i in kept])]))
    return torch.stack(outs_x), torch.stack(outs_s)


@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(3, 20),
    p=st.integers(0, 3),
    keep=st.floats(0.05, 0.95),
    merge=st.floats(0, 1),
    seed=st.integers(0, 9999),
)
def test_prune_merge_matches_loop_reference(t, p, keep, merge, seed):
    g = torch.Generator().manual_seed(seed)
    n, c = p + t, 5
    score, metric = torch.rand(2, n, generator=g), torch.randn(2, n, 4, generator=g)
    x, size = torch.randn(2, n, c, generator=g), torch.randint(1, 4, (2, n, 1), generator=g).float()
    k, m = prune_merge_counts(t, keep, merge)
    if k >= t:
        return
    plan = prune_merge_select(score, metric, k, m, p)
    out_x, out_s = prune_merge_tokens(plan, x, size)
    ref_x, ref_s = reference_prune_merge(score, metric, x, size, k, m, p)
    assert out_x.shape == (2, p + k, c) and plan.num_out == p + k
    torch.testing.assert_close(out_x, ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_s, ref_s)
    if m == t - k:  # everything removed was merged: no mass lost
        torch.testing.assert_close(out_s.sum(1), size.sum(1))


def test_counts_and_value_norm_score():
    assert prune_merge_counts(256, 0.7, 1.0) == (180, 76)
    assert prune_merge_counts(256, 0.7, 0.5) == (180, 38)
    assert prune_merge_counts(10, 1.0, 1.0) == (10, 0)
    probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])  # [B=1, H=2, N=2]
    v = torch.zeros(1, 2, 2, 3)
    v[..., 1, :] = 2.0  # the second token's values are larger in both heads
    assert torch.equal(class_attention_score(probs), torch.tensor([[0.5, 0.5]]))
    score = class_attention_score(probs, v)
    assert score[0, 1] > score[0, 0] == 0


def test_configs_from_dicts_and_mistakes():
    cfg = token_config_from_dict({"method": "prunemerge", "layers": [9, 3], "keep_rate": [0.5, 0.8]})
    assert cfg.layers == (3, 9) and cfg.keep_rates() == (0.8, 0.5)  # rates follow their layers
    assert token_config_from_dict(cfg.to_dict()) == cfg
    assert "prune-merge keep 0.8/0.5" in cfg.describe()
    for bad, words in [
        ({"layers": [3, 6], "keep_rate": [0.5]}, "entries"),
        ({"keep_rate": 0}, "keep_rate"),
        ({"merge_rate": 1.5}, "merge_rate"),
        ({"layers": [3, 3]}, "repeat"),
        ({"keep_rat": 0.5}, "keep_rate"),
    ]:
        with pytest.raises(UserError, match=words):
            token_config_from_dict({"method": "prunemerge", **bad})
    model = make("vit", depth=4)
    with pytest.raises(TokenConfigError, match="out of range"):
        apply_token_reduction(model, TokenPruneMergeConfig(layers=(4,)))
    with pytest.raises(TokenConfigError, match="class token"):
        apply_token_reduction(make("avgpool", depth=2), TokenPruneMergeConfig(layers=(1,)))


# --------------------------------------------------------------------------- the patch


@pytest.mark.parametrize("variant", ["vit", "reg", "deit_distilled"])
def test_prune_merge_reduces_and_protects_prefix(variant):
    model = make(variant, depth=4)
    x = images(3)
    ref = run(model, x)
    apply_token_reduction(model, TokenPruneMergeConfig(layers=(3,), keep_rate=1.0))
    assert torch.equal(run(model, x), ref)  # keeping every token changes nothing
    cfg = TokenPruneMergeConfig(layers=(1, 2), keep_rate=0.5, merge_rate=0.5)
    apply_token_reduction(model, cfg)
    p = model.num_prefix_tokens
    assert tokens_per_layer(model) == [p + 64, p + 64, p + 32, p + 16, p + 16]
    out = run(model, x)
    assert out.shape == ref.shape and not torch.equal(out, ref)
    # the class/distillation/register tokens pass the reduction at their positions, unchanged
    seen = {}
    hook = model.blocks[1].mlp.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    run(model, x)
    hook.remove()
    remove_token_reduction(model)
    plain = {}
    hook = model.blocks[1].mlp.register_forward_pre_hook(lambda m, a: plain.setdefault("x", a[0]))
    run(model, x)
    hook.remove()
    torch.testing.assert_close(seen["x"][:, :p], plain["x"][:, :p], rtol=1e-5, atol=1e-5)
    assert torch.equal(run(model, x), ref)


# --------------------------------------------------------------------------- last block, class token only


@pytest.mark.parametrize("variant", ["vit", "reg", "layerscale", "deit_distilled"])
@pytest.mark.parametrize("fused", [True, False])
def test_class_token_last_block_gives_the_same_logits(variant, fused):
    model = make(variant, depth=3, fused=fused)
    x = images(4)
    ref = run(model, x)
    apply_token_reduction(model, TokenMergeConfig(r=0, class_token_last_block=True))
    assert (run(model, x) - ref).abs().max() <= 1e-5
    rows = 2 if variant == "deit_distilled" else 1
    assert tokens_per_layer(model)[-1] == rows
    flops = estimate_flops(model)
    assert flops["layers"][-1]["macs"] < 0.35 * flops["layers"][0]["macs"]  # counted: ~1/4 of a block left
    # with a reducer in front: identical to the same reducer without the trick
    pm = dict(layers=(1,), keep_rate=0.5)
    apply_token_reduction(model, TokenPruneMergeConfig(**pm))
    reduced = run(model, x)
    apply_token_reduction(model, TokenPruneMergeConfig(**pm, class_token_last_block=True))
    assert (run(model, x) - reduced).abs().max() <= 1e-5


def test_class_token_last_block_refused_where_other_tokens_are_read():
    with pytest.raises(TokenConfigError, match="global_pool"):
        apply_token_reduction(make("avgpool", depth=2), TokenMergeConfig(r=2, class_token_last_block=True))
    with pytest.raises(TokenConfigError, match="global_pool"):
        estimate_flops(make("avgpool", depth=2), TokenMergeConfig(r=2, class_token_last_block=True))


# --------------------------------------------------------------------------- export


def _export(model, path):
    from vitslim.export.onnx_export import export_onnx

    return export_onnx(model, path, input_size=(3, IMG, IMG))


def test_onnx_and_openvino_parity(tmp_path):
    """Register tokens, two reducing blocks with their own keep rates, the class-token last block;
    batch 16 (OpenVINO's own ArgMax-free argmax once failed there)."""
    from vitslim.export.validate import check_parity

    model = make("reg", depth=4)
    apply_token_reduction(
        model, TokenPruneMergeConfig(layers=(1, 2), keep_rate=(0.6, 0.7), merge_rate=0.6, class_token_last_block=True)
    )
    path = _export(model, tmp_path / "pm.onnx")
    assert reducing_scatter_nodes(path) == []
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("TopK") == 2 and "ScatterElements" not in ops and "GatherElements" not in ops
    x = images(16, seed=7)
    ref = run(model, x)
    parity = check_parity(model, path, x, threads=1)
    assert parity.max_abs_diff <= 1e-4 * float(ref.abs().max()) and parity.top1_agreement == 1.0
    pytest.importorskip("openvino")
    from vitslim.evaluate.openvino_runtime import ov_runner
    from vitslim.export.openvino_ir import save_openvino_ir

    xml = save_openvino_ir(path, tmp_path / "pm.xml")
    out = ov_runner(xml, threads=1, precision="f32")(x)
    assert (out - ref).abs().max() <= 1e-4 * float(ref.abs().max())
