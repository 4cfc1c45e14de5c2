"""Mixed precision: sensitivities, greedy allocation under exact budgets, plans and their configs."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import images, meaningful_vit, uniform_cfg
from vitslim.compress.quant import QuantConfig, Site, SiteSpec, quant_points, quantize_
from vitslim.compress.quant.mixed import (
    BitPlan,
    Budget,
    Costs,
    LayerBits,
    LayerInfo,
    MixedPrecisionConfig,
    SensitivityTable,
    greedy_path,
    ladders_for,
    measure_sensitivity,
    mixed_precision_summary,
    pareto_sweep,
    plan_mixed_precision,
    plot_pareto,
)
from vitslim.compress.quant.mixed import float_run as float_run_mod
from vitslim.compress.quant.mixed import sensitivity as sens_mod
from vitslim.compress.quant.report import estimated_bits
from vitslim.compress.tokens import TokenMergeConfig, TokenPruneConfig, apply_token_reduction
from vitslim.errors import UserError

BASE = uniform_cfg(8, 8)


# --------------------------------------------------------------------------- allocation


@st.composite
def tables(draw) -> SensitivityTable:
    """Random layers (sizes, MACs) and random, not necessarily monotone, damages."""
    n = draw(st.integers(1, 6))
    bits = (3, 4, 5, 6, 8)
    layers, weight, act = {}, {}, {}
    for i in range(n):
        name = f"layer{i}"
        channels = draw(st.integers(1, 64))
        params = channels * draw(st.integers(1, 64))
        layers[name] = LayerInfo(name, params, channels, params * draw(st.integers(1, 50)), "generic", i)
        weight[name] = {b: draw(st.floats(0, 10, allow_nan=False)) for b in bits}
        act[name] = {b: draw(st.floats(0, 10, allow_nan=False)) for b in (4, 6, 8)}
    return SensitivityTable("kl", layers, weight, act)


def _path(table: SensitivityTable, metric: str):
    act = {n: (4, 6, 8) if metric == "bops" else (8,) for n in table.layers}
    ladders = ladders_for(table, weight_bits=(3, 4, 5, 6, 8), act_bits=act)
    return greedy_path(ladders, Costs.from_table(table, other_bytes=100), metric)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tables(),
    metric=st.sampled_from(["avg_weight_bits", "size_bytes", "bops"]),
    u1=st.floats(0, 1),
    u2=st.floats(0, 1),
)
def test_allocation_respects_budget_and_is_monotone(table, metric, u1, u2):
    path = _path(table, metric)
    lo, hi = path.costs[-1][metric], path.costs[0][metric]
    b1, b2 = sorted((lo + u1 * (hi - lo), lo + u2 * (hi - lo)))
    i1, i2 = path.within(b1), path.within(b2)
    costs = Costs.from_table(table, other_bytes=100)
    assert costs.totals(path.states[i1])[metric] <= b1  # recomputed from the state, not the path
    assert costs.totals(path.states[i2])[metric] <= b2
    assert path.scores[i2] <= path.scores[i1]  # a larger budget never scores worse
    if i1 > 0:  # the previous state was over budget: the greedy stops at the first fit
        assert path.costs[i1 - 1][metric] > b1
    assert all(a <= b for a, b in zip(path.scores, path.scores[1:], strict=False))
    assert all(a[metric] > b[metric] for a, b in zip(path.costs, path.costs[1:], strict=False))
    with pytest.raises(UserError, match="unreachable"):
        path.within(lo * 0.999 - 1e-9)


def test_greedy_lowers_the_least_sensitive_layer_first():
    layers = {n: LayerInfo(n, 100, 10, 1000, "generic", i) for i, n in enumerate(("robust", "fragile"))}
    weight = {"robust": {4: 0.01, 8: 0.0}, "fragile": {4: 5.0, 8: 0.0}}
    table = SensitivityTable("kl", layers, weight)
    path = greedy_path(ladders_for(table, weight_bits=(4, 8), act_bits={}), Costs.from_table(table), "avg_weight_bits")
    assert path.states[1] == {"robust": (4, None), "fragile": (8, None)}
    assert path.costs[path.within(6.0)]["avg_weight_bits"] == 6.0


# ------------------------------------------------------------------------- config / plan


def test_config_round_trip_and_validation():
    cfg = MixedPrecisionConfig.from_dict({"budget": {"avg_weight_bits": 4.5}, "weight_bits": [8, 4, 6]})
    assert cfg.budget == Budget("avg_weight_bits", 4.5) and cfg.weight_bits == (4, 6, 8)
    assert MixedPrecisionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert MixedPrecisionConfig.from_dict({"max_drop": 1}).max_drop == 1.0
    with pytest.raises(UserError, match="did you mean 'max_drop'"):
        MixedPrecisionConfig.from_dict({"max_dorp": 1.0})
    with pytest.raises(UserError, match="did you mean 'avg_weight_bits'"):
        MixedPrecisionConfig.from_dict({"budget": {"avg_weight_bit": 4.5}})
    with pytest.raises(UserError, match="exactly one"):
        MixedPrecisionConfig.from_dict({"budget": {"bops": 1e9}, "max_drop": 1.0})
    with pytest.raises(UserError, match="exactly one"):
        MixedPrecisionConfig.from_dict({})
    with pytest.raises(UserError, match="must be a number"):
        MixedPrecisionConfig.from_dict({"budget": {"size_bytes": "1MB"}})
    with pytest.raises(UserError, match="integer"):
        MixedPrecisionConfig.from_dict({"max_drop": 1.0, "weight_bits": [4.5]})
    with pytest.raises(UserError, match="not among weight_bits"):
        MixedPrecisionConfig.from_dict({"max_drop": 1.0, "measure_bits": [7]})


def test_plan_json_round_trip(tmp_path):
    plan = BitPlan(
        {
            "blocks.0.attn.qkv": LayerBits(4, 8, None, "post_ln"),
            "patch_embed.proj": LayerBits(None),
            "blocks.0.mlp.fc2": LayerBits(3, 6, "uniform", "post_gelu"),
        },
        {"costs": {"avg_weight_bits": 4.2}},
    )
    assert BitPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert BitPlan.load(plan.save(tmp_path / "plan.json")) == plan
    base = QuantConfig.uniform(8, 8, overrides={"blocks.0.mlp.fc2.weight": None, "blocks.*": SiteSpec("uniform", 6)})
    cfg = plan.to_quant_config(base)
    site = Site("blocks.0.mlp.fc2.weight", "weight", "blocks.0.mlp.fc2", "weight")
    assert cfg.spec_for(site).bits == 3  # the plan wins over the base's later, broader pattern
    assert cfg.spec_for(Site("blocks.0.attn.qkv.input", "post_ln", "blocks.0.attn.qkv", "input")).bits == 8
    assert cfg.spec_for(Site("patch_embed.proj.weight", "weight", "patch_embed.proj", "weight")) is None
    with pytest.raises(UserError):
        BitPlan.from_dict({"layers": {"head": {"bits": 4}}})


def test_plan_config_gives_those_bits_after_quantize():
    model = meaningful_vit()
    mp = MixedPrecisionConfig(budget=Budget("bops", 1.0))  # only used for its candidate lists
    table = measure_sensitivity(
        model, BASE, images(8), weight_bits=mp.weight_bits, act_bits=mp.act_bits, measure_bits=(3, 8), progress=False
    )
    plan = plan_mixed_precision(
        model, BASE, {"budget": {"bops": 0.6 * _bops_top(table)}}, images(8), cache_dir=None, progress=False
    )
    assert plan.meta["costs"]["bops"] <= 0.6 * _bops_top(table)
    layers = dict(plan.layers)
    layers["blocks.1.attn.proj"] = LayerBits(None, None, None, "generic")  # and one float layer
    plan = BitPlan(layers)
    assert len({lb.weight for lb in layers.values()}) > 2 and len({lb.act for lb in layers.values()}) > 1
    points = quant_points(quantize_(meaningful_vit(), plan.to_quant_config(BASE), images(8), progress=False))
    for name, lb in layers.items():
        for slot, bits in (("weight", lb.weight), ("input", lb.act)):
            site = f"{name}.{slot}"
            if bits is None:
                assert site not in points
            elif lb.input_kind is not None or slot == "weight":
                assert points[site].quantizer.bits == bits, site
    assert points["blocks.0.attn.softmax"].quantizer.bits == 8  # unplanned sites keep the base's


def _bops_top(table: SensitivityTable) -> float:
    return float(sum(li.macs * 8 * (8 if li.input_kind else 32) for li in table.layers.values()))


# ------------------------------------------------------------------------- sensitivity


@pytest.mark.parametrize(
    "tokens",
    [None, TokenMergeConfig(r=4), TokenPruneConfig(keep_rate=0.5, layers=(0, 1))],
    ids=["plain", "tome", "evit"],
)
def test_suffix_recompute_matches_the_full_forward(tokens):
    model = meaningful_vit("dinov2_reg")
    if tokens is not None:  # resuming mid-model needs the token sizes the float run had there
        apply_token_reduction(model, tokens)
    x = images(4)
    layers = list(sens_mod.planned_layers(model, BASE))
    run = float_run_mod.float_run(model, x, layers, seed=0)
    with torch.no_grad():
        for stage in (-1, 0, 1, 2):
            torch.testing.assert_close(float_run_mod.logits_from(model, run, stage), run.logits)


def test_sensitivities_measured_interpolated_and_fisher():
    model, x = meaningful_vit(), images(16)
    full = measure_sensitivity(model, BASE, x, measure_bits=None, progress=False)
    fast = measure_sensitivity(model, BASE, x, measure_bits=(3, 8), progress=False)
    fisher = measure_sensitivity(model, BASE, x, method="fisher", progress=False)
    for name in full.layers:
        assert full.weight[name][3] > full.weight[name][8] > 0
        for b in (3, 8):  # anchors are measured the same way
            assert fast.weight[name][b] == pytest.approx(full.weight[name][b])
        assert set(fast.extra["weight"][name]) == {"3", "8"}
    pairs = [(full.weight[n][b], fisher.weight[n][b]) for n in full.layers for b in (3, 4, 5, 6, 8)]
    assert _spearman(*zip(*pairs, strict=True)) > 0.8
    assert _spearman(*zip(*[(full.weight[n][4], fast.weight[n][4]) for n in full.layers], strict=True)) > 0.5


def _spearman(a, b) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_sensitivity_cache_hit_avoids_recomputation(tmp_path, monkeypatch):
    model, x = meaningful_vit(), images(4)
    first = measure_sensitivity(model, BASE, x, measure_bits=(4,), cache_dir=tmp_path, progress=False)
    assert first.meta["cache"] == "miss" and len(list(tmp_path.glob("*.json"))) == 1

    def boom(*_a, **_k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sens_mod, "float_run", boom)
    again = measure_sensitivity(model, BASE, x, measure_bits=(4,), cache_dir=tmp_path, progress=False)
    assert again.meta["cache"] == "hit" and again.weight == first.weight and again.layers == first.layers
    with torch.no_grad():
        model.head.weight.mul_(1.01)  # other weights: a different fingerprint
    with pytest.raises(AssertionError, match="recomputed"):
        measure_sensitivity(model, BASE, x, measure_bits=(4,), cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------- search


def test_accuracy_bound_keeps_an_outlier_layer_precise():
    model = meaningful_vit()
    fragile = "blocks.0.mlp.fc2"
    with torch.no_grad():  # a few huge weights per row: the per-channel scales become far too coarse
        w = model.get_submodule(fragile).weight
        w[:, :2] *= 40.0
    x = images(48, seed=1)
    table = measure_sensitivity(model, BASE, x[:16], progress=False)
    assert max(table.weight, key=lambda n: table.weight[n][8]) == fragile
    plan = plan_mixed_precision(
        model, BASE, {"max_drop": 0.0, "weight_bits": [4, 6, 8]}, x, cache_dir=None, progress=False
    )
    assert plan.meta["drop"]["within_bound"] and plan.meta["drop"]["measured"] <= 0.0
    bits = plan.weight_bits()
    assert bits[fragile] is None or bits[fragile] == 8
    precision = {n: 32 if b is None else b for n, b in bits.items()}
    assert precision[fragile] == max(precision.values())
    assert min(precision.values()) < 8  # the rest was still compressed
    assert plan.meta["costs"]["avg_weight_bits"] < 32


def test_pareto_sweep_and_plot(tmp_path):
    model, x = meaningful_vit(), images(8)
    table = measure_sensitivity(model, BASE, x, measure_bits=(3, 8), progress=False)
    path = greedy_path(
        ladders_for(table, weight_bits=(3, 4, 5, 6, 8), act_bits={}), Costs.from_table(table), "avg_weight_bits"
    )
    sweep = pareto_sweep(path, every=3)
    assert sweep[0]["avg_weight_bits"] == 8 and sweep[-1]["avg_weight_bits"] == 3
    assert all(a["score"] <= b["score"] for a, b in zip(sweep, sweep[1:], strict=False))
    uniform4 = sum(table.weight[n][4] for n in table.layers)
    mixed4 = path.scores[path.within(4.0)]
    assert mixed4 <= uniform4  # greedy at 4 average bits beats the uniform 4-bit proxy score
    out = plot_pareto({"greedy": sweep, "uniform 4": [{"avg_weight_bits": 4, "score": uniform4}]}, tmp_path / "p.png")
    assert out.stat().st_size > 1000


def test_bops_budget_with_fisher_on_a_reparameterised_log_config():
    base = QuantConfig.log(
        8, 8, softmax="logsqrt2", gelu="adalog", weight=BASE.weight, overrides={"patch_embed.*": None}
    )
    model, x = meaningful_vit(), images(8)
    top = measure_sensitivity(model, base, x, method="fisher", act_bits=(4, 6, 8), progress=False)
    assert "patch_embed.proj" not in top.layers
    assert all(top.act[n][4] > top.act[n][8] > 0 for n in top.act)
    budget = 0.5 * _bops_top(top)
    plan = plan_mixed_precision(
        model, base, {"budget": {"bops": budget}, "sensitivity": "fisher"}, x, cache_dir=None, progress=False
    )
    assert plan.meta["costs"]["bops"] <= budget and plan.meta["sensitivity"]["measured_bits"] == []
    assert plan.layers["blocks.0.mlp.fc2"].input_kind == "post_gelu"
    cfg = plan.to_quant_config(base)
    fc2_input = cfg.overrides["blocks.0.mlp.fc2.input"]
    assert fc2_input.quantizer == "adalog" and fc2_input.bits == plan.layers["blocks.0.mlp.fc2"].act


def test_the_report_says_which_sensitivity_widths_were_measured() -> None:
    mp = {"budget": {"avg_weight_bits": 5.0}, "images": 4, "measure_bits": [5]}
    plan = plan_mixed_precision(meaningful_vit(), BASE, mp, images(8), cache_dir=None, progress=False)
    summary = mixed_precision_summary(plan)
    assert summary["measured_bits"] == [5] and estimated_bits(summary) == [3, 4, 6, 8]
    assert estimated_bits({"sensitivity": summary["sensitivity"]}) == []  # an older report: nothing claimed
