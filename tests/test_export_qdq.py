"""Quantized ONNX export with explicit Q/DQ: bit-exact quantizer emulation in ONNX Runtime, graph
layout (int8 initializers, DequantizeLinear axes, Q/DQ on MatMul inputs), parity with the PyTorch
fake-quant model for W8A8, W4A8, log/AdaLog and twin-uniform softmax, ToMe and 2:4-sparse weights, and the
failed-validation path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.helpers import Wrapped, images, meaningful_vit, reducing_scatter_nodes, stored_weight, uniform_cfg
from vitslim.compress.quant import QuantConfig, SiteSpec, create_quantizer, quant_points, quantize_
from vitslim.compress.quant.placement import point_owner
from vitslim.compress.quant.report import stored_types
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.evaluate.runtimes import ort_runtime_ops, ort_session
from vitslim.export.manifest import precision_table
from vitslim.export.onnx_export import export_onnx
from vitslim.export.qdq import CODES_SUFFIX, export_quantized_onnx
from vitslim.export.qdq_modules import ExportAffine, ExportStepFunction, ExportTwinUniform, step_tables
from vitslim.export.validate import ExportValidationError, validate_onnx

INPUT = (3, 32, 32)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort_session(path, threads=1)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _probe(quantizer, data: torch.Tensor) -> torch.Tensor:
    """Calibration-like data, every decision boundary and its float32 neighbours."""
    if hasattr(quantizer, "scale") and quantizer.name == "uniform":
        s, z = quantizer.scale.reshape(-1)[0], quantizer.zero_point.reshape(-1)[0]
        k = torch.arange(-300, 300, dtype=torch.float32)
        edges = (k - z.float() + 0.5) * s  # exact ties: round half to even must match
    else:
        edges = step_tables(quantizer)[0]
        edges = edges[torch.isfinite(edges)]
    up = torch.nextafter(edges, torch.full_like(edges, math.inf))
    down = torch.nextafter(edges, torch.full_like(edges, -math.inf))
    return torch.cat([data.reshape(-1), edges, up, down, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])


SPECS = [
    ("uniform", 8, {}),
    ("uniform", 4, {}),
    ("uniform", 8, {"symmetric": True}),
    ("uniform", 3, {"symmetric": True}),
    ("log2", 4, {}),
    ("logsqrt2", 8, {}),
    ("adalog", 4, {"k_max": 20}),
    ("adalog", 8, {"shift": 0.16997, "k_max": 20}),
    ("tanq", 4, {"alpha_steps": 8}),
    ("twin_uniform", 8, {}),
]


@pytest.mark.parametrize(
    ("name", "bits", "options"), SPECS, ids=[f"{n}{b}{'-' + next(iter(o)) if o else ''}" for n, b, o in SPECS]
)
def test_quantizer_is_bit_exact_in_onnxruntime(tmp_path: Path, name: str, bits: int, options: dict) -> None:
    gen = torch.Generator().manual_seed(bits)
    unsigned = name != "uniform"
    data = torch.softmax(torch.randn(64, 50, generator=gen) * 3, -1) if unsigned else torch.randn(64, 50, generator=gen)
    quantizer = create_quantizer(name, bits, **options).calibrate(data)
    module = ExportAffine(quantizer) if name == "uniform" else ExportStepFunction.from_quantizer(quantizer)
    path = export_onnx(Wrapped(module), tmp_path / "q.onnx", (1,), dynamic_batch=True)
    x = _probe(quantizer, data)
    out = _ort(path, x[:, None].numpy())[:, 0]
    expected = quantizer(x).numpy()
    assert np.array_equal(out, expected), f"{int((out != expected).sum())} of {x.numel()} values differ"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    if name == "uniform":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert ("Clip" in ops) == (bits < 8 or options.get("symmetric", False))
    else:
        assert "QuantizeLinear" not in ops and ops <= {"Gather", "GreaterOrEqual", "Where", "Add", "Squeeze", "Cast"}


@pytest.mark.parametrize("bits", [4, 8])
def test_twin_uniform_exports_as_two_qdq_ranges_bit_exact(tmp_path: Path, bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    data = torch.softmax(torch.randn(64, 50, generator=gen) * 3, -1)
    quantizer = create_quantizer("twin_uniform", bits).calibrate(data)
    path = export_onnx(Wrapped(ExportTwinUniform(quantizer)), tmp_path / "twin.onnx", (1,), dynamic_batch=True)
    x = torch.cat([_probe(quantizer, data), -data[:8].reshape(-1)])
    out = _ort(path, x[:, None].numpy())[:, 0]
    expected = quantizer(x).numpy()
    assert np.array_equal(out, expected), f"{int((out != expected).sum())} of {x.numel()} values differ"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2 and "Gather" not in ops
    with pytest.raises(ValueError, match="shift"):
        ExportTwinUniform(create_quantizer("twin_uniform", bits, shift=0.17).calibrate(data))


def _quantized(cfg, seed: int = 0, prepare=None) -> torch.nn.Module:
    model = meaningful_vit(seed=seed)
    if prepare is not None:
        prepare(model)
    return quantize_(model, cfg, images(16), progress=False)


def _graph(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _check_layout(model: torch.nn.Module, graph: onnx.ModelProto) -> None:
    """Q/DQ pairs per activation site, one weight DQ per weight site, MatMuls read DQs directly."""
    points = {n: p for n, p in quant_points(model).items() if p.enabled}
    uniform_acts = [n for n, p in points.items() if p.kind != "weight" and p.quantizer.name == "uniform"]
    weights = [n for n, p in points.items() if p.kind == "weight"]
    nodes = graph.graph.node
    ops = [n.op_type for n in nodes]
    producer = {o: n for n in nodes for o in n.output}
    assert ops.count("QuantizeLinear") == len(uniform_acts)
    assert ops.count("DequantizeLinear") == len(uniform_acts) + len(weights)
    assert not [op for op in ops if op.startswith("Scatter")]
    for node in nodes:
        if node.op_type == "QuantizeLinear":  # every Q feeds exactly its DQ
            users = [u for u in nodes if node.output[0] in u.input]
            assert [u.op_type for u in users] == ["DequantizeLinear"]
        if node.op_type in ("MatMul", "Gemm"):  # both operands come straight from a DequantizeLinear
            assert [producer[i].op_type for i in node.input[:2]] == ["DequantizeLinear"] * 2, node.name
    for site in weights:
        point = points[site]
        stored, scale, dq = stored_weight(graph.graph, site)
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        expected = point.quantizer.quantize(point_owner(model, point).weight).numpy()
        if site.startswith("blocks."):  # MatMul weights are stored [in, out], scales per output column
            assert axis == 1 and np.array_equal(stored, expected.T)
        else:  # the patch-embedding Conv and the head Gemm keep the PyTorch layout
            assert axis == 0 and np.array_equal(stored, expected)
        assert scale.shape == (stored.shape[axis],)
        assert len(dq.input) == 2  # symmetric: no zero point


def test_w8a8_export_layout_and_parity(tmp_path: Path) -> None:
    model = _quantized(uniform_cfg(8, 8))
    result = export_quantized_onnx(model, tmp_path / "w8a8.onnx", INPUT)
    graph = _graph(result.path)
    _check_layout(model, graph)
    types = {t.data_type for t in graph.graph.initializer}
    assert onnx.TensorProto.INT8 in types and onnx.TensorProto.UINT8 in types
    assert result.graph.qdq_pairs == 17 and result.graph.weight_dequantizers == 10
    assert not result.emulated and len(result.accelerated) == 27
    assert all(s.onnx_type == "uint8" and s.zero_point is not None for s in result.sites if s.kind != "weight")
    assert not result.tensorrt_int8_ready and "zero point" in result.tensorrt_issues[0]
    inputs = [images(16, seed=1), images(16, seed=2)]
    exact = validate_onnx(model, result.path, inputs, max_abs_diff=1e-4, optimize=False, threads=1)
    assert exact.passed and exact.samples == 32 and exact.top1_agreement == 1.0
    # ORT's fused integer kernels depend on the CPU: without VNNI (AVX2), u8 x s8 products are
    # summed in saturating int16 pairs, which moved this tiny model's logits by 0.3
    fused = validate_onnx(model, result.path, inputs, threshold=0.9, threads=1)
    assert fused.passed


def test_per_channel_activations_are_emulated(tmp_path: Path) -> None:
    """ONNX Runtime fuses Q/DQ into integer MatMuls that take one activation zero point (a
    per-axis one failed at run time), so per-channel activation sites export as float ops."""
    per_channel = SiteSpec("uniform", 8, {"channel_axis": -1})
    model = _quantized(uniform_cfg(8, 8, post_ln=per_channel, qk=per_channel))
    result = export_quantized_onnx(model, tmp_path / "channels.onnx", INPUT)
    emulated = {s.site: s for s in result.sites if s.mode == "emulated"}
    assert len(emulated) == 8 and all(s.axis == -1 and "float ops" in s.note for s in emulated.values())
    assert {s.kind for s in emulated.values()} == {"post_ln", "qk"}
    assert any(issue.startswith("emulated: ") for issue in result.tensorrt_issues)  # read from the graph's Round ops
    ops = [n.op_type for n in _graph(result.path).graph.node]
    assert ops.count("QuantizeLinear") == len(result.accelerated) - 10 and "Round" in ops
    inputs = images(32, seed=1)
    # float sums of ORT and PyTorch differ in the last bits: a q/k value on a rounding boundary moves one step
    assert validate_onnx(model, result.path, inputs, max_abs_diff=5e-2, optimize=False, threads=1).passed
    assert validate_onnx(model, result.path, inputs, threshold=0.9, threads=1).passed  # fused integer kernels


def test_w4a8_int8_containers_at_opset18_and_int4_by_default(tmp_path: Path) -> None:
    model = _quantized(uniform_cfg(4, 8))
    result = export_quantized_onnx(model, tmp_path / "w4a8.onnx", INPUT, opset=18)
    _check_layout(model, _graph(result.path))
    weights = [s for s in result.sites if s.kind == "weight"]
    assert all(s.onnx_type == "int8" and "int8 container" in s.note for s in weights)
    for init in _graph(result.path).graph.initializer:
        if init.name.endswith(CODES_SUFFIX):
            codes = numpy_helper.to_array(init)
            assert codes.min() >= -7 and codes.max() <= 7
    assert validate_onnx(model, result.path, images(32, seed=1), max_abs_diff=1e-4, optimize=False, threads=1).passed

    assert any("int8 containers" in n for n in result.notes)
    packed = export_quantized_onnx(model, tmp_path / "w4a8_int4.onnx", INPUT)
    assert packed.opset == 21
    int4 = [t for t in _graph(packed.path).graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == packed.graph.int4_weights == 10
    assert all(s.onnx_type == "int4" for s in packed.sites if s.kind == "weight")
    assert packed.path.stat().st_size < result.path.stat().st_size
    assert validate_onnx(model, packed.path, images(32, seed=1), max_abs_diff=1e-4, optimize=False, threads=1).passed


def test_w4a16_stores_int4_weights_only_and_runs_as_written(tmp_path: Path) -> None:
    model = _quantized(QuantConfig.preset("w4a16"))
    packed = export_quantized_onnx(model, tmp_path / "w4a16.onnx", INPUT)
    unpacked = export_quantized_onnx(model, tmp_path / "w4a16_int8.onnx", INPUT, opset=18)
    ops = [n.op_type for n in _graph(packed.path).graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == packed.graph.int4_weights == 10
    assert {s.onnx_type for s in packed.sites} == {"int4"} and {s.kind for s in packed.sites} == {"weight"}
    int4_bytes = sum(
        t.ByteSize() for t in _graph(packed.path).graph.initializer if t.data_type == onnx.TensorProto.INT4
    )
    int8_bytes = sum(
        t.ByteSize() for t in _graph(unpacked.path).graph.initializer if t.data_type == onnx.TensorProto.INT8
    )
    assert int4_bytes < 0.6 * int8_bytes
    assert stored_types({"precision": precision_table(packed)}) == "10 int4"  # the report's "weights stored"
    # with ONNX Runtime's fusions (MatMulNBits), float32 activations as the graph says
    assert "MatMulNBits" in ort_runtime_ops(packed.path)
    assert validate_onnx(model, packed.path, images(32, seed=1), max_abs_diff=1e-4, threads=1).passed


def test_log_softmax_sites_are_emulated(tmp_path: Path) -> None:
    model = _quantized(QuantConfig.log(8, 8, softmax="adalog"))
    result = export_quantized_onnx(model, tmp_path / "log.onnx", INPUT)
    emulated = {s.site: s for s in result.sites if s.mode == "emulated"}
    assert {n for n in emulated if n.endswith("attn.softmax")} == {"blocks.0.attn.softmax", "blocks.1.attn.softmax"}
    assert all(s.quantizer == "adalog" for s in emulated.values())
    assert any("emulated" in note for note in result.notes)
    ops = [n.op_type for n in _graph(result.path).graph.node]
    assert ops.count("QuantizeLinear") == len(result.accelerated) - 10 and "Gather" in ops
    assert validate_onnx(model, result.path, images(32, seed=1), max_abs_diff=1e-3, optimize=False, threads=1).passed


def test_twin_uniform_softmax_runs_integer_matmuls(tmp_path: Path) -> None:
    """A twin-uniform post-softmax map is two uint8 Q/DQ ranges; attn·v runs once per range, and
    ONNX Runtime fuses every MatMul (those four included) into an integer kernel."""
    model = _quantized(uniform_cfg(8, 8, post_softmax=SiteSpec("twin_uniform", 8)))
    result = export_quantized_onnx(model, tmp_path / "twin.onnx", INPUT)
    assert not result.emulated and len(result.accelerated) == 27 and result.graph.split_matmuls == 2
    twins = [s for s in result.sites if s.quantizer == "twin_uniform"]
    assert len(twins) == 2 and all(s.onnx_type == "uint8" and "once per range" in s.note for s in twins)
    nodes = _graph(result.path).graph.node
    producer = {o: n for n in nodes for o in n.output}
    matmuls = [n for n in nodes if n.op_type == "MatMul"]
    assert len(matmuls) == 8 + 2 * 3  # qkv, proj, fc1, fc2 per block; q·kᵀ once, attn·v twice
    for node in matmuls:
        assert [producer[i].op_type for i in node.input] == ["DequantizeLinear"] * 2, node.name
    inputs = images(32, seed=1)
    # an ulp of difference in ORT's Softmax can move a value across a fine-range step
    exact = validate_onnx(model, result.path, inputs, max_abs_diff=0.05, optimize=False, threads=1)
    assert exact.top1_agreement == 1.0 and exact.mean_abs_diff < 1e-3
    assert validate_onnx(model, result.path, inputs, threshold=0.9, threads=1).passed  # fused integer kernels
    fused = ort_runtime_ops(result.path, threads=1)
    assert "MatMul" not in fused and fused.get("MatMulIntegerToFloat") == len(matmuls)


def test_tome_w8a8_export(tmp_path: Path) -> None:
    model = _quantized(uniform_cfg(8, 8), prepare=lambda m: apply_token_reduction(m, TokenMergeConfig(r=3)))
    result = export_quantized_onnx(model, tmp_path / "tome.onnx", INPUT)
    graph = _graph(result.path)
    ops = [n.op_type for n in graph.graph.node]
    assert reducing_scatter_nodes(result.path) == []
    assert ops.count("QuantizeLinear") == 17
    # float emulation of the Q/DQ graph: only code flips from float rounding differences remain, and
    # merge decisions are discrete, so a flip can move a near-tie logit further than without ToMe
    x = images(32, seed=1)
    assert validate_onnx(model, result.path, x, threshold=0.95, max_abs_diff=0.1, optimize=False, threads=1).passed


def _prune_2_4(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("blocks."):
                w = mod.weight.view(mod.out_features, -1, 4)
                drop = w.abs().argsort(dim=-1)[..., :2]
                w.scatter_(-1, drop, 0.0)


def test_sparse_2_4_w8a8_keeps_pattern(tmp_path: Path) -> None:
    model = _quantized(uniform_cfg(8, 8), prepare=_prune_2_4)
    result = export_quantized_onnx(model, tmp_path / "sparse.onnx", INPUT)
    checked = 0
    for init in _graph(result.path).graph.initializer:
        if init.name.startswith("blocks.") and init.name.endswith(CODES_SUFFIX):
            codes = numpy_helper.to_array(init)  # [in, out]: groups of 4 along the input axis 0
            nonzero = (codes.reshape(-1, 4, codes.shape[1]) != 0).sum(axis=1)
            assert nonzero.max() <= 2
            checked += 1
    assert checked == 8
    assert validate_onnx(model, result.path, images(32, seed=1), max_abs_diff=0.1, optimize=False, threads=1).passed


def test_failed_validation_renames_the_artifact(tmp_path: Path) -> None:
    model = _quantized(uniform_cfg(8, 8))
    path = export_quantized_onnx(model, tmp_path / "model.onnx", INPUT).path
    other = meaningful_vit(seed=7)  # a different network: its argmax rarely agrees
    with pytest.raises(ExportValidationError, match="failed validation") as info:
        validate_onnx(other, path, images(32, seed=1), threads=1)
    assert not path.exists()
    assert info.value.failed_path == tmp_path / "model.failed.onnx" and info.value.failed_path.is_file()
    assert info.value.validation.top1_agreement < 0.99 and not info.value.validation.passed
    # a max-abs-diff limit fails an export whose argmax agrees
    good = export_quantized_onnx(model, tmp_path / "tight.onnx", INPUT).path
    with torch.no_grad():
        model.head.bias += 0.01  # every logit moves by 0.01: same argmax
    with pytest.raises(ExportValidationError, match="limit 0.005") as info:
        validate_onnx(model, good, images(8, seed=1), max_abs_diff=0.005, optimize=False, threads=1)
    assert info.value.validation.top1_agreement == 1.0
    assert (tmp_path / "tight.failed.onnx").is_file()


def test_disabled_points_and_unquantized_models(tmp_path: Path) -> None:
    model = _quantized(uniform_cfg(8, 8))
    for name, point in quant_points(model).items():
        point.enabled = name.endswith(".weight")
    result = export_quantized_onnx(model, tmp_path / "w8.onnx", INPUT)
    assert result.graph.quantize_linear == 0 and result.graph.weight_dequantizers == 10
    from vitslim.errors import UserError

    with pytest.raises(UserError, match="not quantized"):
        export_quantized_onnx(meaningful_vit(), tmp_path / "fp.onnx", INPUT)
