"""Uniform quantizers, quantizer configs and state dicts, and the rest of the quantizer API."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.quantizer_data import ALL, PROP, check_common, gelu_data, softmax_data, weight_data
from vitslim.compress.quant import (
    GELU_SHIFT,
    UniformQuantizer,
    create_quantizer,
    quantizer_from_config,
)


# --------------------------------------------------------------------- uniform
@PROP
@given(
    bits=st.integers(2, 8),
    seed=st.integers(0, 2**16),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
    method=st.sampled_from(["minmax", "percentile", "mse"]),
    outliers=st.booleans(),
    offset=st.floats(-2.0, 2.0),
)
def test_uniform_properties(bits, seed, symmetric, per_channel, method, outliers, offset):
    x = weight_data(seed, 12, 40, outliers) + offset
    q = UniformQuantizer(bits, symmetric=symmetric, channel_axis=0 if per_channel else None, method=method).calibrate(x)
    check_common(q, x)
    assert torch.equal(q(x), q.dequantize(q.quantize(x)))  # the in-place fake-quant path is the codes path
    scale = q.scale if per_channel else q.scale.expand(12)
    assert q.scale.shape == ((12,) if per_channel else ())
    # error at most s/2 inside the representable (clipping) range
    lo, hi = q.clip_range()
    if not per_channel:
        lo, hi = lo.expand(12), hi.expand(12)
    err = (q(x) - x).abs()
    inside = (x >= lo[:, None]) & (x <= hi[:, None])
    bound = (scale[:, None] / 2) * (1 + 1e-5) + 1e-6
    assert (err <= bound)[inside].all()
    # outside it: clamped to the nearest end
    assert torch.equal(q(x).clamp(lo[:, None], hi[:, None]), q(x))
    # monotone per channel
    xs = torch.sort(torch.cat([x, torch.linspace(-30, 30, 200).expand(12, -1)], 1), dim=1).values
    assert (torch.diff(q(xs), dim=1) >= 0).all()
    # zero is represented exactly (symmetric: z = 0; asymmetric: integer zero point)
    assert torch.equal(q(torch.zeros(12, 3)), torch.zeros(12, 3))
    if symmetric:
        assert int(q.zero_point.abs().max()) == 0
        assert q.code_range() == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        # narrow symmetric grid: Q(-x) = -Q(x)
        assert torch.equal(q(-x), -q(x))
    else:
        assert q.code_range() == (0, 2**bits - 1)


def test_symmetric_weights_keep_2_4_sparsity_and_per_row_scales():
    w = weight_data(10, 8, 32, outliers=False)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(8, 8)
    w = w * mask
    q = create_quantizer("uniform", bits=4, symmetric=True, channel_axis=0, method="minmax")
    q.calibrate(w)
    assert q.scale.shape == (8,)
    assert torch.allclose(q.scale, w.abs().amax(1) / 7)
    y = q(w)
    assert torch.equal(y[mask == 0], torch.zeros(int((mask == 0).sum())))
    # each row only uses its own scale
    assert torch.allclose(y / q.scale[:, None], torch.round(y / q.scale[:, None]), atol=1e-5)
    # wrong channel count is a clear error
    with pytest.raises(ValueError, match="channels"):
        q(torch.randn(5, 32))


def test_uniform_activation_channel_axis_last_and_conv_weight():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 10, 6, generator=g) * torch.arange(1, 7)
    q = UniformQuantizer(8, channel_axis=-1).calibrate(x)
    assert q.scale.shape == (6,)
    check_common(q, x)
    conv = torch.randn(5, 3, 3, 3, generator=g)
    qc = UniformQuantizer(4, symmetric=True, channel_axis=0).calibrate(conv)
    assert qc.scale.shape == (5,)
    check_common(qc, conv)


def test_symmetric_full_range_reaches_minus_128_with_the_same_scale():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 1.27])
    narrow = UniformQuantizer(8, symmetric=True, method="minmax").calibrate(x)
    full = UniformQuantizer(8, symmetric=True, narrow=False, method="minmax").calibrate(x)
    assert narrow.code_range() == (-127, 127) and full.code_range() == (-128, 127)
    assert float(full.scale) == float(narrow.scale) == pytest.approx(2.0 / 127) and int(full.zero_point) == 0
    below = torch.tensor([-2.0 * 128 / 127, -3.0])  # one step past the bound, and beyond
    assert full.quantize(below).tolist() == [-128, -128] and narrow.quantize(below).tolist() == [-127, -127]
    assert create_quantizer("uniform", 8, **full.config()["options"]).narrow is False


def test_uniform_asymmetric_minmax_matches_formula():
    x = torch.tensor([-1.0, -0.25, 0.0, 0.5, 3.0])
    q = UniformQuantizer(4, method="minmax").calibrate(x)
    s = 4.0 / 15
    assert float(q.scale) == pytest.approx(s)
    assert int(q.zero_point) == round(1.0 / s)
    codes = q.quantize(x)
    assert torch.equal(codes, torch.clamp(torch.round(x / q.scale) + q.zero_point, 0, 15).int())


def test_percentile_clips_outliers_and_mse_beats_minmax_on_heavy_tails():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(20000, generator=g)
    x[:3] = 50.0
    mm = UniformQuantizer(4, method="minmax").calibrate(x)
    pc = UniformQuantizer(4, method="percentile", percentile=0.999).calibrate(x)
    ms = UniformQuantizer(4, method="mse").calibrate(x)
    assert float(pc.scale) < 0.2 * float(mm.scale)
    assert ms.mse(x) < mm.mse(x)


# ----------------------------------------------------------- config / state
@pytest.mark.parametrize(
    "name,options,data",
    [
        ("uniform", {"symmetric": True, "channel_axis": 0}, "weight"),
        ("uniform", {"channel_axis": -1, "method": "percentile"}, "act"),
        ("uniform", {}, "softmax"),
        ("log2", {}, "softmax"),
        ("logsqrt2", {}, "softmax"),
        ("adalog", {"shift": GELU_SHIFT}, "gelu"),
        ("adalog", {}, "softmax"),
        ("tanq", {}, "softmax"),
        ("tanq", {"alpha": 1.0}, "softmax"),
        ("twin_uniform", {}, "softmax"),
    ],
)
def test_config_and_state_dict_round_trip(name, options, data, tmp_path):
    x = {
        "weight": weight_data(13, 10, 20, False),
        "act": torch.randn(3, 7, 12),
        "softmax": softmax_data(13, 2.0, rows=2),
        "gelu": gelu_data(13),
    }[data]
    q = create_quantizer(name, bits=5, **options).calibrate(x)
    cfg = json.loads(json.dumps(q.config()))
    assert cfg["name"] == name and cfg["bits"] == 5
    path = tmp_path / "q.pt"
    torch.save(q.state_dict(), path)
    q2 = quantizer_from_config(cfg)
    assert not q2.calibrated
    q2.load_state_dict(torch.load(path))
    assert q2.calibrated and q2.config() == q.config()
    assert torch.equal(q2(x), q(x))
    assert torch.equal(q2.quantize(x), q.quantize(x))
    sd, sd2 = q.state_dict(), q2.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())


def test_state_dict_inside_a_module_tree():
    x = softmax_data(14, 2.0, rows=2)
    tree = torch.nn.ModuleDict(
        {
            "a": create_quantizer("adalog", bits=4).calibrate(x),
            "w": UniformQuantizer(4, symmetric=True, channel_axis=0).calibrate(torch.randn(6, 4)),
        }
    )
    fresh = torch.nn.ModuleDict(
        {"a": create_quantizer("adalog", bits=4), "w": UniformQuantizer(4, symmetric=True, channel_axis=0)}
    )
    fresh.load_state_dict(tree.state_dict())
    assert torch.equal(fresh["a"](x), tree["a"](x))
    assert fresh["w"].scale.shape == (6,)


# --------------------------------------------------------------- misc API
def test_calibrate_accepts_a_list_of_tensors():
    x = softmax_data(15, 2.0, rows=4)
    a = create_quantizer("adalog", bits=4).calibrate([x[:2], x[2:]])
    b = create_quantizer("adalog", bits=4).calibrate(x)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.k, b.k)
    w = torch.randn(3, 8, 5)
    c = UniformQuantizer(4, channel_axis=-1).calibrate([w[:1], w[1:]])
    d = UniformQuantizer(4, channel_axis=-1).calibrate(w)
    assert torch.equal(c.scale, d.scale)


def test_dtype_preserved():
    x = softmax_data(16, 2.0, rows=1)
    for name in ALL:
        q = create_quantizer(name, bits=6).calibrate(x)
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            xl = x.to(dtype)
            y = q(xl)
            assert y.dtype == dtype
            # computed in float32, returned in the input dtype
            assert torch.equal(y, q(xl.float()).to(dtype))


def test_calibration_is_deterministic_and_subsampling_works():
    x = softmax_data(17, 2.0, rows=4)
    a = create_quantizer("tanq", bits=4, search_samples=1 << 15).calibrate(x)
    b = create_quantizer("tanq", bits=4, search_samples=1 << 15).calibrate(x)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.alpha, b.alpha)
    full = create_quantizer("tanq", bits=4, search_samples=None).calibrate(x)
    assert full.mse(x) <= a.mse(x) < 1.5 * full.mse(x)


def test_repr_mentions_configuration():
    q = create_quantizer("adalog", bits=4)
    assert "bits=4" in repr(q) and "calibrated=False" in repr(q)
