"""2:4 semi-structured sparsity: the pattern, the methods, layer selection, config, ONNX check."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import images, meaningful_vit, run, tiny_vit, uniform_cfg
from vitslim.compress.calibration.hessian import relative_output_error
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.sparsity import (
    SparsityConfig,
    check_24,
    get_sparsity_method,
    holds_24,
    list_sparsity_methods,
    mask_24,
    onnx_24_report,
    sparsify_,
    to_semi_structured_,
)
from vitslim.errors import UserError
from vitslim.export.onnx_export import export_onnx

METHODS = ("magnitude", "wanda", "sparsegpt")
BLOCK_LINEARS = [f"blocks.{i}.{leaf}" for i in range(2) for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def _prune(method: str, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return get_sparsity_method(method).prune(weight, x.T @ x, 0.01, 128)


# ----------------------------------------------------------------------------- the 2:4 mask


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 6).map(lambda g: 4 * g)),
        elements=st.floats(-100, 100, width=32),
    )
)
def test_mask_keeps_the_two_largest_of_every_group(weights: np.ndarray) -> None:
    w = torch.from_numpy(weights)
    keep = mask_24(w.abs())
    assert (keep.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    groups, kept = w.abs().reshape(w.shape[0], -1, 4), keep.reshape(w.shape[0], -1, 4)
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert (smallest_kept >= largest_dropped).all()
    pruned = get_sparsity_method("magnitude").prune(w, None, 0.01, 128)
    assert holds_24(pruned)
    assert ((pruned.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all()
    assert torch.equal(pruned[keep], w[keep])


def test_holds_24_along_the_given_axis() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0]])
    assert holds_24(w)
    assert not holds_24(w, axis=0)  # axis 0 has length 2: no group of 4
    assert not holds_24(torch.ones(2, 4))
    assert holds_24(w.T, axis=0)
    assert not holds_24(torch.zeros(3, 6))  # 6 is not a multiple of 4


def test_registry_lists_methods_and_suggests() -> None:
    assert list_sparsity_methods() == sorted(METHODS)
    with pytest.raises(UserError, match="did you mean 'sparsegpt'"):
        get_sparsity_method("sparsgpt")


# ----------------------------------------------------------------------------- the methods


def test_sparsegpt_beats_magnitude_on_correlated_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g) @ torch.randn(8, 64, generator=g) + 0.05 * torch.randn(2048, 64, generator=g)
    w = torch.randn(32, 64, generator=g)
    errors = {m: relative_output_error(w, _prune(m, w, x), x.T @ x) for m in METHODS}
    assert all(holds_24(_prune(m, w, x)) for m in METHODS)
    assert errors["sparsegpt"] < 0.5 * errors["magnitude"], errors


def test_sparsegpt_compensates_exactly_when_inputs_come_in_duplicate_pairs() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 16, generator=g).repeat_interleave(2, dim=1)  # columns 2k and 2k+1 equal
    w = torch.randn(8, 32, generator=g)
    sparse = get_sparsity_method("sparsegpt").prune(w, x.T @ x, 1e-6, 8)
    assert holds_24(sparse)
    assert relative_output_error(w, sparse, x.T @ x) < 1e-3
    assert relative_output_error(w, _prune("magnitude", w, x), x.T @ x) > 0.3


def test_wanda_beats_magnitude_with_a_few_large_norm_inputs() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1024, 64, generator=g)
    x[:, ::9] *= 30.0  # a few outlier features
    w = torch.randn(32, 64, generator=g)
    wanda = relative_output_error(w, _prune("wanda", w, x), x.T @ x)
    magnitude = relative_output_error(w, _prune("magnitude", w, x), x.T @ x)
    assert wanda < 0.5 * magnitude, (wanda, magnitude)


# ----------------------------------------------------------------------------- on tiny ViTs


@pytest.mark.parametrize("method", METHODS)
def test_every_block_linear_gets_the_pattern_and_the_head_stays_dense(method: str, tiny_family: str) -> None:
    model = meaningful_vit(tiny_family)
    head = model.head.weight.detach().clone()
    report = sparsify_(model, SparsityConfig(method), images(8), progress=False)
    checked = check_24(model)
    assert all(checked[name] for name in BLOCK_LINEARS), checked
    assert not checked["head"] and torch.equal(model.head.weight, head)
    assert list(report["layers"]) == BLOCK_LINEARS and report["skipped"] == {}
    assert report["images"] == 8 and report["sparsity"] >= 0.5
    for entry in report["layers"].values():
        assert entry["method"] == method and entry["sparsity"] >= 0.5
        assert 0 < entry["relative_error"] < 1.5


def test_sequential_sparsegpt_keeps_the_model_closest_to_dense() -> None:
    x = images(16)
    outputs = {}
    for method in METHODS:
        model = meaningful_vit()
        ref = run(model, x)
        sparsify_(model, SparsityConfig(method), x, progress=False)
        outputs[method] = float((run(model, x) - ref).norm() / ref.norm())
    assert outputs["sparsegpt"] < outputs["wanda"] < outputs["magnitude"], outputs


def test_sequential_calibration_sees_the_sparsified_earlier_blocks() -> None:
    x = images(8)
    models = {seq: meaningful_vit() for seq in (True, False)}
    for seq, model in models.items():
        sparsify_(model, SparsityConfig("sparsegpt", sequential=seq), x, progress=False)
    weights = {seq: {n: model.get_submodule(n).weight for n in BLOCK_LINEARS} for seq, model in models.items()}
    for name in BLOCK_LINEARS:  # block 0 sees the same inputs either way; block 1 does not
        assert torch.equal(weights[True][name], weights[False][name]) == name.startswith("blocks.0."), name


def test_magnitude_without_data_has_no_error_and_data_methods_require_data() -> None:
    model = tiny_vit()
    report = sparsify_(model, {"method": "magnitude"}, progress=False)
    assert report["images"] == 0 and all(e["relative_error"] is None for e in report["layers"].values())
    with pytest.raises(UserError, match="needs calibration images"):
        sparsify_(tiny_vit(), SparsityConfig("wanda"), progress=False)


def test_exclude_keeps_layers_dense() -> None:
    model = meaningful_vit()
    fc2 = {n: model.get_submodule(n).weight.detach().clone() for n in BLOCK_LINEARS if n.endswith("fc2")}
    report = sparsify_(model, SparsityConfig("sparsegpt", exclude=("*.mlp.fc2",)), images(8), progress=False)
    assert not set(report["layers"]) & set(fc2)
    for name, weight in fc2.items():
        assert torch.equal(model.get_submodule(name).weight, weight)
    assert all(check_24(model, ["*.qkv", "*.proj", "*.fc1"]).values())


def test_explicit_include_reaches_the_head() -> None:
    model = meaningful_vit()
    report = sparsify_(model, SparsityConfig("sparsegpt", include=("blocks.*", "head")), images(8), progress=False)
    assert list(report["layers"])[-1] == "head" and report["layers"]["head"]["relative_error"] is not None
    assert all(check_24(model).values())


def test_layers_that_cannot_hold_the_pattern() -> None:
    model = tiny_vit(embed_dim=66)  # qkv/proj/fc1 read 66 features; fc2 reads 264
    report = sparsify_(model, SparsityConfig("magnitude"), progress=False)
    assert set(report["layers"]) == {"blocks.0.mlp.fc2", "blocks.1.mlp.fc2"}
    assert report["skipped"]["blocks.0.attn.qkv"] == "in_features 66 is not a multiple of 4"
    with pytest.raises(UserError, match="'blocks.0.attn.qkv' cannot be 2:4 sparse"):
        sparsify_(tiny_vit(embed_dim=66), SparsityConfig("magnitude", include=("*.qkv",)), progress=False)


def test_selection_errors() -> None:
    with pytest.warns(UserWarning, match="matches no Linear"), pytest.raises(UserError, match="no Linear layer"):
        sparsify_(tiny_vit(), SparsityConfig("magnitude", include=("block.*",)), progress=False)
    quantized = quantize_(tiny_vit(), uniform_cfg(8, 8), images(4), progress=False)
    with pytest.raises(UserError, match="before quantization"):
        sparsify_(quantized, SparsityConfig("magnitude"), progress=False)


def test_deterministic_for_a_seed() -> None:
    x = images(12)
    cfg = SparsityConfig("sparsegpt", images=6)
    states = []
    for seed in (0, 0, 1):
        model = meaningful_vit()
        sparsify_(model, cfg, x, progress=False, seed=seed)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_quantization_after_sparsity_keeps_the_pattern() -> None:
    model = meaningful_vit()
    x = images(8)
    sparsify_(model, SparsityConfig("sparsegpt"), x, progress=False)
    quantize_(model, QuantConfig.uniform(8, 8), x, progress=False)
    fake = {}
    for name in BLOCK_LINEARS:
        layer = model.get_submodule(name)
        fake[f"{name}.weight"] = layer.weight_quant.quantizer(layer.weight).detach()
        assert not torch.equal(fake[f"{name}.weight"], layer.weight)  # quantization did change the weights
    assert check_24(fake) == dict.fromkeys(BLOCK_LINEARS, True)


# ----------------------------------------------------------------------------- ONNX


def test_exported_onnx_weights_keep_the_pattern(tmp_path) -> None:
    model = meaningful_vit()
    sparsify_(model, SparsityConfig("wanda"), images(8), progress=False)
    path = export_onnx(model, tmp_path / "sparse.onnx", (3, 32, 32))
    report = onnx_24_report(path)
    weights = report["weights"]
    assert {n: weights[n]["pattern_24"] for n in BLOCK_LINEARS} == dict.fromkeys(BLOCK_LINEARS, True)
    assert not weights["head"]["pattern_24"] and report["with_pattern"] == len(BLOCK_LINEARS)
    for name in BLOCK_LINEARS:  # Linear weights are stored as Wᵀ [in, out]: reduction axis 0
        layer = model.get_submodule(name)
        assert weights[name]["shape"] == [layer.in_features, layer.out_features]
        assert weights[name]["reduction_axis"] == 0 and weights[name]["sparsity"] >= 0.5
    assert weights["head"]["op"] == "Gemm" and weights["head"]["reduction_axis"] == 1


def _graph_file(tmp_path, w_t: np.ndarray, q: np.ndarray, zero_point: np.ndarray, b: np.ndarray) -> str:
    """MatMul(x, Transpose(W)) -> MatMul(., DequantizeLinear(q, s, zp)) -> Gemm(., B) (transB 0)."""
    nodes = [
        helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w"], ["h1"], name="mm_transposed"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["q_dq"], axis=1),
        helper.make_node("MatMul", ["h1", "q_dq"], ["h2"], name="mm_quantized"),
        helper.make_node("Gemm", ["h2", "b"], ["y"], name="gemm"),
    ]
    inits = [
        numpy_helper.from_array(w_t, "w_t"),
        numpy_helper.from_array(q, "q"),
        numpy_helper.from_array(np.full(q.shape[1], 0.1, np.float32), "scale"),
        numpy_helper.from_array(zero_point, "zp"),
        numpy_helper.from_array(b, "b"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        inits,
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    return str(path)


def test_onnx_report_traces_transposes_and_quantized_weights(tmp_path) -> None:
    pattern = np.array([1.0, 0.0, 2.0, 0.0], np.float32)
    w_t = np.tile(pattern, (8, 2))  # stored [out 8, in 8]: 2:4 along axis 1, not along axis 0
    q = np.tile(np.array([[3], [5], [5], [3]], np.int8), (2, 4))  # [in 8, out 4], zero point 5 per column
    b = np.tile(np.array([[1.0], [0.0], [0.0], [1.0]], np.float32), (1, 4))  # [in 4, out 4]
    report = onnx_24_report(_graph_file(tmp_path, w_t, q, np.full(4, 5, np.int8), b))["weights"]
    assert report["w_t"]["reduction_axis"] == 1 and report["w_t"]["pattern_24"]
    assert report["q"]["reduction_axis"] == 0 and report["q"]["pattern_24"]  # zeros are the zero point
    assert report["b"]["reduction_axis"] == 0 and report["b"]["pattern_24"] and report["b"]["sparsity"] == 0.5
    dense = onnx_24_report(_graph_file(tmp_path, w_t.T.copy(), q, np.zeros(4, np.int8), b))["weights"]
    assert not dense["w_t"]["pattern_24"] and not dense["q"]["pattern_24"]


# ----------------------------------------------------------------------------- config


def test_config_round_trip_and_validation() -> None:
    cfg = SparsityConfig.from_dict({"method": "wanda", "include": "blocks.1.*", "exclude": ["*.fc2"], "images": 64})
    assert cfg.include == ("blocks.1.*",) and cfg.exclude == ("*.fc2",)
    assert SparsityConfig.from_dict(cfg.to_dict()) == cfg
    assert SparsityConfig().method == "sparsegpt" and SparsityConfig().include == ("blocks.*",)
    bad = [
        ({"methd": "wanda"}, "unknown key 'methd'.*did you mean 'method'"),
        ({"method": "sparsgpt"}, "did you mean 'sparsegpt'"),
        ({"method": 3}, "'method' must be a string"),
        ({"include": 3}, "'include' must be"),
        ({"exclude": ["a", 1]}, "'exclude' must be"),
        ({"include": []}, "at least one"),
        ({"dampening": "1%"}, "'dampening' must be a number"),
        ({"dampening": True}, "'dampening' must be a number"),
        ({"dampening": 5}, r"in \[0, 1\]"),
        ({"block_size": "128"}, "'block_size' must be an integer"),
        ({"block_size": 6}, "multiple of 4"),
        ({"images": 0}, "'images' must be an integer >= 1"),
        ({"sequential": "yes"}, "'sequential' must be true or false"),
    ]
    for data, message in bad:
        with pytest.raises(UserError, match=message):
            SparsityConfig.from_dict(data)
    with pytest.raises(UserError, match="must be a mapping"):
        SparsityConfig.from_dict(["sparsegpt"])


# ----------------------------------------------------------------------------- GPU kernels


def test_semi_structured_needs_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="need an NVIDIA CUDA GPU"):
        to_semi_structured_(tiny_vit())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_semi_structured_matches_the_dense_sparse_model() -> None:
    model = meaningful_vit()
    sparsify_(model, SparsityConfig("magnitude"), progress=False)
    dense = copy.deepcopy(model).to("cuda", torch.float16)
    status = to_semi_structured_(model)
    assert all(status[n] == "semi-structured" for n in BLOCK_LINEARS), status
    assert status["head"] == "dense: no 2:4 pattern"
    x = images(4).to("cuda", torch.float16)
    torch.testing.assert_close(run(model, x), run(dense, x), atol=2e-2, rtol=2e-2)
