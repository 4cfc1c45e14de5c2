"""Token reduction: ToMe-style merging and EViT-style pruning (vitslim.compress.tokens)."""

from __future__ import annotations

import copy
import pickle

import onnx
import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from tests.helpers import reducing_scatter_nodes
from tests.token_models import IMG, TINY, VARIANTS, images, make, run, strengthen
from vitslim.compress.tokens import (
    TokenConfigError,
    TokenMergeConfig,
    TokenPruneConfig,
    apply_token_reduction,
    bipartite_soft_matching,
    estimate_flops,
    evit_select,
    is_token_reduced,
    merge_tokens,
    prune_tokens,
    remove_token_reduction,
    token_config_from_dict,
    token_reduction_state,
    tokens_per_layer,
    trace_tokens,
    unmerge_tokens,
)

# --------------------------------------------------------------------------- pure functions


def reference_merge(metric, x, size, r, p):
    """Loop-and-index reference of the bipartite soft matching merge (scatter allowed here)."""
    outs_x, outs_s = [], []
    for b in range(x.shape[0]):
        n = x.shape[1]
        a_pos, b_pos = list(range(p, n, 2)), list(range(p + 1, n, 2))
        m = F.normalize(metric[b, p:], dim=-1)
        sims = m[0::2] @ m[1::2].T
        best, partner = sims.max(dim=-1)
        chosen = sorted(range(len(a_pos)), key=lambda i: -best[i].item())[:r]
        acc_x = {j: x[b, j] * size[b, j] for j in range(n)}
        acc_s = {j: size[b, j].clone() for j in range(n)}
        for i in chosen:
            j = b_pos[partner[i]]
            acc_x[j] = acc_x[j] + x[b, a_pos[i]] * size[b, a_pos[i]]
            acc_s[j] = acc_s[j] + size[b, a_pos[i]]
        gone = {a_pos[i] for i in chosen}
        keep = [j for j in range(n) if j not in gone]
        outs_x.append(torch.stack([acc_x[j] / acc_s[j] for j in keep]))
        outs_s.append(torch.stack([acc_s[j] for j in keep]))
    return torch.stack(outs_x), torch.stack(outs_s)


@settings(max_examples=30, deadline=None)
@given(
    t=st.integers(2, 21),
    p=st.integers(0, 3),
    r=st.integers(0, 12),
    seed=st.integers(0, 10_000),
)
def test_merge_matches_loop_reference(t, p, r, seed):
    g = torch.Generator().manual_seed(seed)
    bsz, c = 2, 5
    n = p + t
    metric = torch.randn(bsz, n, 4, generator=g)
    x = torch.randn(bsz, n, c, generator=g)
    size = torch.randint(1, 4, (bsz, n, 1), generator=g).float()
    plan = bipartite_soft_matching(metric, r, p)
    r_eff = min(r, t // 2)
    assert plan.r == r_eff and plan.num_out == n - r_eff
    out_x, out_s = merge_tokens(plan, x, size)
    ref_x, ref_s = reference_merge(metric, x, size, r_eff, p)
    assert out_x.shape == (bsz, n - r_eff, c)
    torch.testing.assert_close(out_x, ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_s, ref_s)
    torch.testing.assert_close(out_s.sum(dim=1), size.sum(dim=1))  # sizes always sum to the input's
    # protected tokens stay in place, unchanged up to the rounding of x·size/size
    torch.testing.assert_close(out_x[:, :p], x[:, :p], rtol=1e-6, atol=0)

    back = unmerge_tokens(plan, out_x)
    assert back.shape == x.shape
    assert torch.equal(back[:, :p], out_x[:, :p])
    for b in range(bsz):  # survivors map back onto their own rows; merged A tokens onto their partner's
        torch.testing.assert_close(back[b, plan.keep[b]], out_x[b])
        for s, d in zip(plan.src[b].tolist(), plan.dst[b].tolist(), strict=True):
            assert (s - p) % 2 == 0 and (d - p) % 2 == 1 and min(s, d) >= p  # an A token into a B token
            assert torch.equal(back[b, s], back[b, d])


def test_merging_identical_tokens_is_exact():
    g = torch.Generator().manual_seed(0)
    p, pairs, c = 1, 6, 8
    uniq = torch.randn(2, pairs, c, generator=g)
    x = torch.cat([torch.randn(2, p, c, generator=g), uniq.repeat_interleave(2, dim=1)], dim=1)
    plan = bipartite_soft_matching(x, pairs, p)  # every A token's twin is its best B partner
    out, size = merge_tokens(plan, x)
    assert torch.equal(out[:, p:], uniq)
    assert torch.equal(size[:, p:, 0], torch.full((2, pairs), 2.0))
    assert torch.equal(unmerge_tokens(plan, out), x)


def test_evit_select_and_fuse():
    g = torch.Generator().manual_seed(0)
    p, t, c, k = 2, 10, 6, 4
    x = torch.randn(3, p + t, c, generator=g)
    size = torch.randint(1, 3, (3, p + t, 1), generator=g).float()
    cls_attn = torch.rand(3, p + t, generator=g).softmax(-1)
    plan = evit_select(cls_attn, k, p)
    out, out_size = prune_tokens(plan, x, size)
    assert out.shape == (3, p + k + 1, c) and plan.num_out == p + k + 1
    assert torch.equal(out[:, :p], x[:, :p])
    torch.testing.assert_close(out_size.sum(1), size.sum(1))
    for b in range(3):
        a = cls_attn[b, p:]
        top = sorted(a.topk(k).indices.tolist())
        assert plan.keep[b].tolist() == top  # the k most attended, in original order
        assert torch.equal(out[b, p : p + k], x[b, p:][top])
        rest = [i for i in range(t) if i not in top]
        w = a[rest] / a[rest].sum()
        torch.testing.assert_close(out[b, -1], (w[:, None] * x[b, p:][rest]).sum(0))
        torch.testing.assert_close(out_size[b, -1], size[b, p:][rest].sum(0))


# --------------------------------------------------------------------------- the patch


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fused", [True, False])
def test_r0_identical_and_remove_restores(variant, fused):
    model = make(variant, depth=3, fused=fused)
    x = images()
    ref = run(model, x)
    apply_token_reduction(model, TokenMergeConfig(r=0))
    assert is_token_reduced(model) and isinstance(model, VisionTransformer)
    assert isinstance(model.blocks[0], Block) and isinstance(model.blocks[0].attn, Attention)
    assert torch.equal(run(model, x), ref)

    apply_token_reduction(model, TokenMergeConfig(r=6))
    reduced = run(model, x)
    assert reduced.shape == ref.shape and not torch.equal(reduced, ref)

    remove_token_reduction(model)
    assert type(model) is type(make(variant, depth=1)) and not is_token_reduced(model)
    assert all(type(b) is Block and type(b.attn) is Attention for b in model.blocks)
    assert not any(hasattr(m, "_tr_state") or hasattr(m, "_tr_layer") for m in model.modules())
    assert torch.equal(run(model, x), ref)


def test_prune_keep_rate_one_is_identical():
    model = make("vit", depth=3)
    x = images()
    ref = run(model, x)
    apply_token_reduction(model, TokenPruneConfig(keep_rate=1.0, layers=(0, 1, 2)))
    assert torch.equal(run(model, x), ref)


SCHEDULES = [
    (TokenMergeConfig(r=8), [65, 57, 49, 41, 33]),
    (TokenMergeConfig(r=8, schedule="decreasing"), [65, 49, 38, 33, 33]),  # r = 16, 11, 5, 0
    (TokenMergeConfig(schedule=[0, 30, 40, 2]), [65, 65, 35, 18, 16]),  # 40 and 2 are clamped to t // 2
    (TokenMergeConfig(r=[3, 0, 3, 0]), [65, 62, 62, 59, 59]),
    (TokenMergeConfig(keep_ratio=0.5), [65, 57, 49, 41, 33]),  # 32 of 64 patch tokens left
    (TokenMergeConfig(keep_ratio=0.25, schedule="decreasing"), [65, 41, 25, 17, 17]),  # 48 merges: 24,16,8,0
    (TokenMergeConfig(r=100), [65, 33, 17, 9, 5]),  # clamped: at most half the patch tokens per layer
    (TokenPruneConfig(keep_rate=0.5, layers=(1, 2)), [65, 65, 34, 19, 19]),  # 1 + 32 + 1, 1 + 17 + 1
]


@pytest.mark.parametrize("cfg,expected", SCHEDULES)
def test_tokens_per_layer_follow_schedule(cfg, expected):
    model = apply_token_reduction(make("vit", depth=4), cfg)
    x = images(3)
    with trace_tokens(model) as trace:
        run(model, x)
    assert [tr.tokens_in for tr in trace] + [trace[-1].tokens_out] == expected
    assert tokens_per_layer(model) == expected
    assert tokens_per_layer(cfg, num_tokens=65, depth=4) == expected
    for tr in trace:  # sizes always sum to the original token count; the class token stays size 1
        torch.testing.assert_close(tr.size.sum(dim=1), torch.full((3,), 65.0))
        assert torch.equal(tr.size[:, 0], torch.ones(3))


def test_register_tokens_kept_in_place():
    model = make("reg", depth=3)  # prefix: class + 2 register tokens
    x = images(2)
    captured = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: captured.setdefault("ref", o))
    ref = run(model, x)
    apply_token_reduction(model, TokenMergeConfig(r=10))
    model.blocks[0]._forward_hooks.clear()
    model.blocks[0].register_forward_hook(lambda m, i, o: captured.setdefault("tome", o))
    with trace_tokens(model) as trace:
        out = run(model, x)
    assert captured["tome"].shape[1] == 67 - 10
    # block 0 attends over all tokens and the prefix never merges: prefix outputs are unchanged
    torch.testing.assert_close(captured["tome"][:, :3], captured["ref"][:, :3], rtol=0, atol=1e-6)
    for tr in trace:
        assert torch.equal(tr.size[:, :3], torch.ones(2, 3))
        torch.testing.assert_close(tr.size.sum(1), torch.full((2,), 67.0))
    assert out.shape == ref.shape


@pytest.mark.parametrize("variant", ["avgpool", "vit"])
def test_merging_duplicate_tokens_changes_nothing(variant):
    """Pairs of identical tokens merged with proportional attention and size-weighted pooling
    compute exactly what the unmerged model computes (up to float rounding)."""
    model = make(variant, depth=3)
    p = model.num_prefix_tokens
    g = torch.Generator().manual_seed(3)
    pairs = 16
    tokens = torch.cat(
        [torch.randn(2, p, 64, generator=g), torch.randn(2, pairs, 64, generator=g).repeat_interleave(2, dim=1)], 1
    )

    def features(m):
        with torch.no_grad():
            return m.forward_head(m.norm(m.blocks(tokens)), pre_logits=True)

    ref = features(model)
    r = pairs // 2  # merge half the twins: sizes 1 and 2 mixed, so proportional attention matters
    apply_token_reduction(model, TokenMergeConfig(schedule=[r, 0, 0]))
    with trace_tokens(model) as trace:
        got = features(model)
    assert trace[0].tokens_out == p + 2 * pairs - r
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # without proportional attention the merged model is measurably different
    apply_token_reduction(model, TokenMergeConfig(schedule=[r, 0, 0], proportional_attention=False))
    assert (features(model) - ref).abs().max() > 1e-2


def test_evit_on_models_without_class_token_is_refused():
    with pytest.raises(TokenConfigError, match="class token"):
        apply_token_reduction(make("avgpool", depth=2), TokenPruneConfig(keep_rate=0.5, layers=(1,)))
    with pytest.raises(TokenConfigError, match="out of range"):
        apply_token_reduction(make("vit", depth=2), TokenPruneConfig(keep_rate=0.5, layers=(3,)))


def test_fused_and_explicit_attention_agree():
    x = images()
    outs = []
    for fused in (True, False):
        for cfg in (TokenMergeConfig(r=8), TokenPruneConfig(keep_rate=0.6, layers=(1, 2))):
            outs.append(run(apply_token_reduction(make("layerscale", depth=4, fused=fused), cfg), x))
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1], outs[3], rtol=1e-5, atol=1e-5)


def test_hooks_and_module_swaps_still_see_reduced_tokens():
    model = apply_token_reduction(make("vit", depth=3), TokenMergeConfig(r=8))
    seen: dict[str, list[int]] = {}
    for i, blk in enumerate(model.blocks):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            mod = blk.get_submodule(name)
            mod.register_forward_hook(
                lambda m, inp, out, key=f"{i}.{name}": seen.setdefault(key, []).append(inp[0].shape[1])
            )

    class Doubler(torch.nn.Module):  # a stand-in for a quantized Linear swapped in later
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    model.blocks[1].mlp.fc2 = Doubler(model.blocks[1].mlp.fc2)
    run(model, images(2))
    assert seen["0.attn.qkv"] == [65] and seen["0.mlp.fc1"] == [57]
    assert seen["2.norm1"] == [49] and seen["2.attn.proj"] == [49] and seen["2.mlp.fc2"] == [41]
    assert model.blocks[1].mlp.fc2.calls == 1
    model.blocks[0].attn = copy.deepcopy(make("vit", depth=1).blocks[0].attn)  # unpatched attention
    with pytest.raises(RuntimeError, match="apply it again"):
        run(model, images(2))


def test_state_is_per_model_and_copies_work():
    a = apply_token_reduction(make("vit", depth=3), TokenMergeConfig(r=4))
    b = apply_token_reduction(make("vit", depth=3, seed=5), TokenMergeConfig(r=8))
    assert token_reduction_state(a) is not token_reduction_state(b)
    assert token_reduction_state(a) is a.blocks[2]._tr_state is a.blocks[2].attn._tr_state
    x = images(2)
    ref = run(a, x)
    c = copy.deepcopy(a)
    assert token_reduction_state(c) is not token_reduction_state(a)
    assert token_reduction_state(c) is c.blocks[1]._tr_state
    assert torch.equal(run(c, x), ref)
    d = pickle.loads(pickle.dumps(a))
    assert torch.equal(run(d, x), ref)
    assert tokens_per_layer(a) == [65, 61, 57, 53] and tokens_per_layer(b) == [65, 57, 49, 41]


def test_configs_from_dicts_and_bad_configs():
    cfg = token_config_from_dict({"method": "tome", "r": 8, "schedule": "decreasing"})
    assert cfg == TokenMergeConfig(r=8, schedule="decreasing")
    assert token_config_from_dict(cfg.to_dict()) == cfg
    prune = token_config_from_dict({"method": "evit", "keep_rate": 0.7, "layers": [9, 3, 6]})
    assert prune.layers == (3, 6, 9) and token_config_from_dict(prune.to_dict()) == prune
    for bad in (
        {"method": "tome", "schedule": "cosine"},
        {"method": "tome", "r": -1},
        {"method": "tome", "keep_ratio": 1.5},
        {"method": "tome", "keep_ratio": 0.5, "flops_ratio": 0.5},
        {"method": "tome", "schedule": [1, 2], "keep_ratio": 0.5},
        {"method": "evit", "keep_rate": 0},
        {"method": "nope"},
        {"method": "tome", "bogus": 1},
    ):
        with pytest.raises(TokenConfigError):
            token_config_from_dict(bad)
    with pytest.raises(TokenConfigError, match="depth"):
        apply_token_reduction(make("vit", depth=2), TokenMergeConfig(schedule=[1, 2, 3]))


def test_flops_estimate_counts_quantized_linears():
    from vitslim.compress.quant import QuantConfig, quantize_

    model = make("vit", depth=2)
    apply_token_reduction(model, TokenMergeConfig(r=4))
    before = estimate_flops(model)
    quantize_(model, QuantConfig.uniform(8, 8), [torch.randn(4, 3, IMG, IMG)], progress=False)
    assert estimate_flops(model) == before


def test_flops_estimate():
    model = make("vit", depth=4)
    base = estimate_flops(model)
    assert base["total_macs"] == base["unreduced_macs"] and base["ratio"] == 1.0
    r0 = estimate_flops(model, TokenMergeConfig(r=0))
    assert r0["total_macs"] == r0["unreduced_macs"] == base["unreduced_macs"]
    assert r0["total_flops"] == 2 * r0["total_macs"]
    totals = [estimate_flops(model, TokenMergeConfig(r=r))["total_macs"] for r in (0, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(totals, totals[1:], strict=False))
    # the hand count for one unreduced block: 65 tokens, dim 64, mlp 256
    n, c = 65, 64
    layer = base["layers"][0]
    assert layer["attn_macs"] == n * (c * 3 * c + c * c) + 2 * n * n * c
    assert layer["mlp_macs"] == n * 2 * c * 4 * c
    # a patched model reports its own reduction; img_size changes the token count
    apply_token_reduction(model, TokenMergeConfig(r=8))
    est = estimate_flops(model)
    assert est["tokens_per_layer"] == tokens_per_layer(model) == [65, 57, 49, 41, 33]
    assert est["total_macs"] == estimate_flops(model, TokenMergeConfig(r=8))["total_macs"] < base["total_macs"]
    assert estimate_flops(model, img_size=64)["num_tokens"] == 257
    pruned = estimate_flops(model, TokenPruneConfig(keep_rate=0.5, layers=(1,)))
    assert pruned["tokens_per_layer"] == [65, 65, 34, 34, 34] and pruned["ratio"] < 1
    # a FLOPs target picks a schedule that meets it
    target = TokenMergeConfig(flops_ratio=0.6)
    got = estimate_flops(model, target)
    assert got["ratio"] <= 0.6
    apply_token_reduction(model, target)
    assert tokens_per_layer(model) == got["tokens_per_layer"]


# --------------------------------------------------------------------------- ONNX


def test_merge_graph_is_small(tmp_path):
    """Per merging block: no ScatterElements, two TopK (edges, survivors), one small GatherElements
    (the partners of the chosen edges), the similarity matmul of A rows by B rows and the small
    assign matmuls: no matmul over all N tokens on both sides besides the attention's own."""
    from onnx import shape_inference

    from vitslim.export.onnx_export import export_onnx

    model = make("vit", depth=4)
    plain = onnx.load(str(export_onnx(model, tmp_path / "plain.onnx", input_size=(3, IMG, IMG)))).graph
    apply_token_reduction(model, TokenMergeConfig(r=4))
    merged = shape_inference.infer_shapes(
        onnx.load(str(export_onnx(model, tmp_path / "m.onnx", input_size=(3, IMG, IMG))))
    )
    ops = [n.op_type for n in merged.graph.node]
    layers = 4
    assert ops.count("ScatterElements") == 0 and ops.count("TopK") == 2 * layers
    assert ops.count("GatherElements") == layers
    matmuls = ops.count("MatMul") - [n.op_type for n in plain.node].count("MatMul")
    assert matmuls <= 3 * layers  # similarity, assign, and (after the first) the size assign per block
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in merged.graph.value_info}
    head_dim, r = model.blocks[0].attn.head_dim, 4
    inner = [  # the contracted size of every 3-D product of two activations: similarity and assign
        dims[n.input[0]][-1]
        for n in merged.graph.node
        if n.op_type == "MatMul" and len(dims.get(n.input[0], [])) == 3 and len(dims.get(n.input[1], [])) == 3
    ]
    assert len(inner) == matmuls and all(k in (head_dim, r) for k in inner), inner  # no [N - r, N] combine
    assert (len(merged.graph.node) - len(plain.node)) / layers <= 70


@pytest.mark.parametrize(
    "variant,cfg",
    [
        # register tokens + layer-scale-free avg pooling (size-weighted) with merging
        ("reg_avg", TokenMergeConfig(r=8, schedule="decreasing")),
        ("deit_distilled", TokenPruneConfig(keep_rate=0.6, layers=(1, 2))),
    ],
)
def test_onnx_export_parity_without_reducing_scatter(tmp_path, variant, cfg):
    from vitslim.export.onnx_export import export_onnx
    from vitslim.export.validate import check_parity

    if variant == "reg_avg":
        torch.manual_seed(0)
        model = timm.create_model(
            "vit_tiny_patch16_224", depth=3, reg_tokens=2, class_token=False, global_pool="avg", init_values=0.5, **TINY
        ).eval()
        strengthen(model)
    else:
        model = make(variant, depth=3)
    apply_token_reduction(model, cfg)
    assert tokens_per_layer(model)[-1] < tokens_per_layer(model)[0]
    path = export_onnx(model, tmp_path / "tokens.onnx", input_size=(3, IMG, IMG))
    assert reducing_scatter_nodes(path) == []
    x = images(16, seed=7)
    ref = run(model, x)
    parity = check_parity(model, path, x, threads=1)
    print(f"{variant}: max_abs_diff={parity.max_abs_diff:.3g} scale={ref.abs().max():.3g} top1={parity.top1_agreement}")
    assert parity.max_abs_diff <= 1e-4 * float(ref.abs().max())
    assert parity.top1_agreement == 1.0
    # the state holds no tensors from the export trace after it
    assert token_reduction_state(model).size is None
