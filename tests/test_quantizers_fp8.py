"""FP8 E4M3 quantizer: properties against an independently enumerated E4M3 grid, its float8 Q/DQ
export (bit-exact in ONNX Runtime), the ``fp8`` preset's file and its site records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import Wrapped, images, meaningful_vit
from tests.quantizer_data import PROP, check_common, weight_data
from vitslim.compress.quant import Fp8Quantizer, QuantConfig, SiteSpec, create_quantizer, quant_points, quantize_
from vitslim.errors import UserError
from vitslim.evaluate.runtimes import ort_session
from vitslim.export.manifest import precision_table
from vitslim.export.onnx_export import export_onnx
from vitslim.export.qdq import FP8_OPSET, export_quantized_onnx
from vitslim.export.qdq_modules import ExportFp8
from vitslim.export.validate import validate_onnx
from vitslim.runtimes.onnxruntime import OnnxRuntime

INPUT = (3, 32, 32)


def e4m3_grid() -> torch.Tensor:
    """Every non-negative finite E4M3 value from the format's definition (bias 7, no infinities,
    the all-ones pattern is NaN), in float64."""
    subnormal = [m / 8 * 2.0**-6 for m in range(8)]
    normal = [(1 + m / 8) * 2.0 ** (e - 7) for e in range(1, 16) for m in range(8) if (e, m) != (15, 7)]
    return torch.tensor(subnormal + normal, dtype=torch.float64)


GRID = e4m3_grid()


def nearest_even(u: torch.Tensor) -> torch.Tensor:
    """Round ``u`` to the nearest E4M3 value, ties to the even mantissa, saturating at 448."""
    a = u.double().abs().clamp(max=448.0)
    idx = torch.searchsorted(GRID, a).clamp(1, GRID.numel() - 1)
    lo, hi = GRID[idx - 1], GRID[idx]
    pick_hi = (hi - a < a - lo) | ((hi - a == a - lo) & (idx % 2 == 0))  # even pattern: even index
    out = torch.where(a <= GRID[0], GRID[0], torch.where(pick_hi, hi, lo))
    return torch.where(u < 0, -out, out)


def test_grid_has_the_format_extremes() -> None:
    assert GRID.numel() == 127 and GRID.max() == 448.0 and GRID[1] == 2.0**-9


@PROP
@given(
    seed=st.integers(0, 2**16),
    per_channel=st.booleans(),
    method=st.sampled_from(["minmax", "mse"]),
    outliers=st.booleans(),
    offset=st.floats(-2.0, 2.0),
)
def test_fp8_properties(seed, per_channel, method, outliers, offset) -> None:
    x = weight_data(seed, 12, 40, outliers) + offset
    q = Fp8Quantizer(channel_axis=0 if per_channel else None, method=method).calibrate(x)
    check_common(q, x)
    scale = (q.scale if per_channel else q.scale.expand(12))[:, None]
    y = q(x)
    # the nearest E4M3 value of x / s, ties to even, saturating (an independent enumeration)
    assert torch.equal(y, (nearest_even(x / scale) * scale).float())
    # error bound inside the range: half a step, relative 2^-4 (normal) or absolute s·2^-10 (subnormal)
    inside = x.abs() <= 448 * scale
    bound = torch.maximum(x.abs() * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6)
    assert ((y - x).abs() <= bound)[inside].all()
    # saturation: far outside it, ±448·s
    far = torch.cat([x, 1e4 * scale.expand(12, 1), -1e4 * scale.expand(12, 1)], 1)
    assert torch.equal(q(far)[:, -2:], torch.cat([448 * scale, -448 * scale], 1))
    # monotone per channel, zero exact
    xs = torch.sort(torch.cat([x, torch.linspace(-30, 30, 200).expand(12, -1)], 1), dim=1).values
    assert (q(xs).diff(dim=1) >= 0).all()
    assert torch.equal(q(torch.zeros(12, 3)), torch.zeros(12, 3))
    if method == "minmax":
        assert torch.allclose(scale[:, 0] * 448, x.abs().amax(1) if per_channel else x.abs().max().expand(12))


def test_fp8_mse_clips_no_worse_and_options_checked() -> None:
    x = weight_data(3, 8, 200, outliers=True)
    wide = Fp8Quantizer(channel_axis=0).calibrate(x)
    searched = Fp8Quantizer(channel_axis=0, method="mse").calibrate(x)
    assert searched.mse(x) <= wide.mse(x)
    for bad in ({"bits": 4}, {"symmetric": False}, {"method": "percentile"}, {"grid": 1}):
        with pytest.raises(ValueError):
            create_quantizer("fp8", **bad)


def test_fp8_qdq_is_bit_exact_in_onnxruntime(tmp_path: Path) -> None:
    data = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    q = Fp8Quantizer().calibrate(data)
    path = export_onnx(Wrapped(ExportFp8(q)), tmp_path / "q.onnx", (1,), opset=FP8_OPSET)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    s = float(q.scale)
    mids = ((GRID[1:] + GRID[:-1]) / 2 * s).float()  # ties between neighbouring levels
    x = torch.cat([data.reshape(-1), mids, -mids, torch.tensor([1e6, -1e6, 0.0, -0.0, 1e-30])])
    session = ort_session(path, threads=1)
    out = session.run(None, {session.get_inputs()[0].name: x[:, None].numpy()})[0][:, 0]
    assert np.array_equal(out, q(x).numpy()), f"{int((out != q(x).numpy()).sum())} values differ"
    assert torch.equal(ExportFp8(q)(x), q(x))  # the eager form computes the quantizer's values


def test_fp8_preset_exports_float8_qdq_with_parity(tmp_path: Path) -> None:
    model = quantize_(meaningful_vit(), QuantConfig.preset("fp8"), images(16), progress=False)
    result = export_quantized_onnx(model, tmp_path / "fp8.onnx", INPUT)
    assert result.opset == FP8_OPSET and any("fp8" in n for n in result.notes)
    points = {n: p for n, p in quant_points(model).items() if p.enabled}
    assert len(result.sites) == len(points) and all(s.onnx_type == "float8e4m3fn" for s in result.sites)
    for s in result.sites:  # what a readiness check reads: the type, per-tensor scales, weight axes
        if s.kind == "weight":
            assert s.axis is not None and s.scale is None
        else:
            assert s.axis is None and s.scale == pytest.approx(float(points[s.site].quantizer.scale))
    graph = onnx.load(str(result.path)).graph
    stored = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN and len(t.dims) > 1]
    assert len(stored) == sum(s.kind == "weight" for s in result.sites) == result.graph.weight_dequantizers
    # ONNX Runtime's Q/DQ fusions would reject float8 activations: the session keeps them apart
    fused = validate_onnx(model, result.path, images(32, seed=1), max_abs_diff=1e-4, threads=1)
    assert fused.passed and fused.top1_agreement == 1.0
    variant = {"onnx": {"format": "qdq", "precision": precision_table(result)}}
    assert "fp8 Q/DQ, dequantized" in OnnxRuntime().ran_in(variant, "CPUExecutionProvider")  # the summary's label
    with pytest.raises(UserError, match="opset >= 19"):
        export_quantized_onnx(model, tmp_path / "old.onnx", INPUT, opset=18)


def test_fp8_weights_allowed_per_channel_activations_refused(tmp_path: Path) -> None:
    cfg = QuantConfig.uniform(8, 8, max_weight_bits=7, weight=SiteSpec("fp8", 8))
    assert cfg.weight.quantizer == "fp8"
    with pytest.raises(UserError, match="symmetric uniform"):
        QuantConfig.uniform(8, 8, weight=SiteSpec("log2", 4))
    per_channel = QuantConfig.uniform(8, 8, post_ln=SiteSpec("fp8", 8, {"channel_axis": -1}))
    model = quantize_(meaningful_vit(), per_channel, images(8), progress=False)
    with pytest.raises(UserError, match="per-channel fp8 activations"):
        export_quantized_onnx(model, tmp_path / "x.onnx", INPUT)
    with torch.no_grad():  # PyTorch runs it (fake quantization); only the export refuses it
        assert math.isfinite(float(model(images(2)).abs().max()))
