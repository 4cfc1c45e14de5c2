"""Property and unit tests of the PTQ quantizers (vitslim.compress.quant)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.quantizer_data import (
    ALL,
    LOGS,
    PROP,
    UNSIGNED,
    check_common,
    gelu_data,
    probe_points,
    softmax_data,
    weight_data,
)
from vitslim.compress.quant import (
    GELU_SHIFT,
    AdaLogQuantizer,
    Log2Quantizer,
    TanQuantizer,
    TwinUniformQuantizer,
    UniformQuantizer,
    create_quantizer,
    get_quantizer_class,
    is_quantizer,
    list_quantizers,
    register_quantizer,
)
from vitslim.errors import UserError


# ------------------------------------------------------------------- registry
def test_registry_lists_with_wildcards():
    assert list_quantizers() == sorted([*ALL, "fp8"])
    assert list_quantizers("log*") == ["log2", "logsqrt2"]
    assert list_quantizers("*uniform") == ["twin_uniform", "uniform"]
    assert list_quantizers("nothing*") == []
    assert is_quantizer("tanq") and not is_quantizer("tan")
    assert get_quantizer_class("adalog") is AdaLogQuantizer


@pytest.mark.parametrize(
    "typo,suggestion", [("unifrom", "uniform"), ("adalg", "adalog"), ("log_sqrt2", "logsqrt2"), ("tanQ", "tanq")]
)
def test_registry_unknown_name_suggests(typo, suggestion):
    with pytest.raises(UserError, match=f"did you mean .*'{suggestion}'"):
        create_quantizer(typo, bits=4)


def test_registry_unknown_name_without_match_lists_available():
    with pytest.raises(UserError, match="available: adalog"):
        create_quantizer("zzzzzz")


def test_registry_rejects_duplicates_and_non_quantizers():
    with pytest.raises(ValueError):
        register_quantizer("uniform")(type("Other", (UniformQuantizer,), {}))
    with pytest.raises(TypeError):
        register_quantizer("not_a_quantizer")(int)
    assert "not_a_quantizer" not in list_quantizers()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bits", [0, 1, 9, 16, 2.5, True, "4", None])
def test_bits_validated(name, bits):
    with pytest.raises(ValueError, match="bits"):
        create_quantizer(name, bits=bits)


@pytest.mark.parametrize("name", ALL)
def test_forward_before_calibrate_raises(name):
    q = create_quantizer(name, bits=4)
    assert not q.calibrated
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(torch.rand(10))
    with pytest.raises(RuntimeError, match="not calibrated"):
        q.quantize(torch.rand(10))
    assert q.calibrate(torch.rand(100)) is q and q.calibrated


def test_bad_options_rejected():
    with pytest.raises(ValueError):
        create_quantizer("uniform", method="kmeans")
    with pytest.raises(ValueError):
        create_quantizer("tanq", alpha=4.0)
    with pytest.raises(TypeError):
        create_quantizer("log2", symmetric=True)
    with pytest.raises(ValueError, match="NaN"):
        create_quantizer("uniform").calibrate(torch.tensor([1.0, math.nan]))


# --------------------------------------------------------- unsigned (softmax)
@PROP
@given(
    name=st.sampled_from(UNSIGNED),
    bits=st.integers(2, 8),
    seed=st.integers(0, 2**16),
    sigma=st.floats(0.5, 6.0),
    tokens=st.integers(2, 64),
)
def test_unsigned_properties_on_softmax(name, bits, seed, sigma, tokens):
    x = softmax_data(seed, sigma, rows=4, tokens=tokens)
    q = create_quantizer(name, bits=bits).calibrate(x)
    check_common(q, x)
    # monotone over the whole real line (zeros, negatives, above the max)
    p = probe_points(x)
    assert (torch.diff(q(p)) >= 0).all()
    assert torch.equal(q(q(p)), q(p))
    assert torch.equal(q(p), q.dequantize(q.quantize(p)))  # the fast fake-quant path is the codes path
    # zero stays exactly zero, negatives become zero
    assert float(q(torch.zeros(1))[0]) == 0.0
    assert float(q(-torch.ones(1))[0]) == 0.0


@PROP
@given(name=st.sampled_from(UNSIGNED), bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_shifted_quantizers_on_gelu(name, bits, seed):
    x = gelu_data(seed)
    q = create_quantizer(name, bits=bits, shift=GELU_SHIFT).calibrate(x)
    assert q.shift == GELU_SHIFT and q.config()["options"]["shift"] == GELU_SHIFT
    check_common(q, x)
    p = probe_points(x, GELU_SHIFT)
    y = q(p)
    assert (torch.diff(y) >= 0).all()
    assert torch.equal(y, q.dequantize(q.quantize(p)))
    assert float(y.min()) == pytest.approx(-GELU_SHIFT)  # the zero code of u = x + c
    if bits >= 4:  # log2's top step (a factor 2) is coarse for large GELU outputs
        assert q.mse(x) < 0.1 * float(x.var())


@pytest.mark.parametrize("name", UNSIGNED)
def test_levels_are_fixed_points(name):
    x = softmax_data(1, 2.0, rows=2)
    q = create_quantizer(name, bits=4).calibrate(x)
    lv = q.levels()
    assert lv.numel() <= 16 and float(lv[0]) == 0.0
    assert torch.equal(q(lv), lv)


@pytest.mark.parametrize("bits", range(2, 9))
def test_log2_exact_on_powers_of_two(bits):
    q = Log2Quantizer(bits).calibrate(softmax_data(0, 2.0, rows=2))
    s = q.scale
    last = min(2**bits - 2, 120)  # 8-bit levels below 2^-126 are float32 subnormals
    k = torch.arange(0, last + 1, dtype=torch.float32)
    x = s * torch.exp2(-k)
    assert torch.equal(q(x), x)
    assert torch.equal(q.quantize(x), k.to(torch.int32))
    # zero code: values below the smallest level (and zeros) map to 0
    assert int(q.quantize(torch.zeros(1))) == 2**bits - 1
    if bits <= 6:
        below = s * 2.0 ** (-(2**bits - 2) - 0.6)
        assert float(q(below.reshape(1))[0]) == 0.0
    # values above s saturate at s
    assert float(q((3 * s).reshape(1))[0]) == float(s)


def test_logsqrt2_levels_follow_the_formula():
    q = create_quantizer("logsqrt2", bits=4).calibrate(softmax_data(3, 2.0, rows=2))
    codes = torch.arange(15, dtype=torch.int32)
    expected = q.scale * torch.exp2(-codes.float() / 2)
    assert torch.allclose(q.dequantize(codes), expected, rtol=1e-6)
    assert float(q.dequantize(torch.tensor([15], dtype=torch.int32))[0]) == 0.0
    # the scale is one of the RepQ-ViT candidates: a quantile or the max
    x = softmax_data(3, 2.0, rows=2).reshape(-1)
    cands = [float(torch.kthvalue(x, int(round(p * (x.numel() - 1))) + 1).values) for p in (0.999, 0.9999, 0.99999)] + [
        float(x.max())
    ]
    assert min(abs(float(q.scale) - c) for c in cands) < 1e-7


def test_adalog_table_and_base():
    x = softmax_data(4, 2.0, rows=2)
    q = AdaLogQuantizer(4).calibrate(x)
    k, r = int(q.k), q.r
    assert r == 37 and 1 <= k <= 2 * r
    t = q.table()
    assert t.shape == (37,) and float(t[0]) == 1.0
    assert torch.allclose(t, torch.exp2(-torch.arange(37.0) / 37))
    codes = torch.arange(15, dtype=torch.int32)
    expected = q.scale * torch.exp2(-codes.double() * k / r)
    assert torch.allclose(q.dequantize(codes).double(), expected, rtol=1e-6)
    assert q.base() == pytest.approx(2 ** (k / r))
    # a fixed base-2 AdaLog (k = r) is the log2 quantizer
    q2 = AdaLogQuantizer(4, k_max=37).calibrate(x)
    q2.k.fill_(37)
    ql = Log2Quantizer(4).calibrate(x)
    q2.scale.copy_(ql.scale)
    assert torch.allclose(q2(x), ql(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", LOGS)
@pytest.mark.parametrize("bits", [3, 6])
def test_log_codes_follow_the_formula(name, bits):
    """The in-place encoder computes ``clamp(round(-log2(u/s)·f), 0, Z)``, zeros and negatives -> Z."""
    x = softmax_data(5, 2.0, rows=2)
    q = create_quantizer(name, bits).calibrate(x)
    factor = {"log2": 1.0, "logsqrt2": 2.0}.get(name) or q.r / int(q.k)
    zero = 2**bits - 1
    probe = torch.cat([x.reshape(-1), torch.tensor([0.0, -1.0, 1e-45, 5.0])])
    index = torch.round(-torch.log2(probe.clamp_min(1e-30) / q.scale) * factor)
    expected = torch.where((probe <= 1e-37) | (index >= zero), zero, index.clamp_min(0)).to(torch.int32)
    assert torch.equal(q.quantize(probe), expected)


def test_tanq_levels_dense_at_both_ends():
    q = TanQuantizer(4, alpha=2.8).calibrate(softmax_data(5, 2.0, rows=2))
    u = q.levels_unit()
    gaps = torch.diff(u)
    assert float(u[0]) == 0.0 and float(u[-1]) == 1.0
    assert gaps[0] < gaps[7] / 3 and gaps[-1] < gaps[7] / 3
    assert torch.allclose(u, 1 - u.flip(0), atol=1e-6)  # symmetric compander


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_tanq_small_alpha_is_uniform(bits):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5000, generator=g)
    q = TanQuantizer(bits, alpha=1e-4).calibrate(x)
    n = 2**bits - 1
    assert torch.allclose(q.levels_unit(), torch.arange(n + 1) / n, atol=1e-6)
    # same output as an unsigned uniform grid on [0, s] (away from rounding ties)
    s = float(q.scale)
    ref = torch.clamp(torch.round(x / s * n), 0, n) * s / n
    assert torch.allclose(q(x), ref, atol=1e-5 * s)


def test_twin_uniform_ranges():
    x = softmax_data(6, 2.0, rows=2)
    q = TwinUniformQuantizer(6).calibrate(x)
    n = 32
    m = int(q.m)
    assert 1 <= m <= 5
    assert float(q.delta2()) == float(q.delta1) * 2**m
    codes = q.quantize(x)
    fine = codes < n
    assert torch.equal(q(x)[fine], codes[fine].float() * q.delta1)
    j0 = 2 ** (5 - m)  # the first R2 level is n·Δ1
    coarse = codes[~fine] - n
    assert (coarse >= j0).all() and torch.equal(q(x)[~fine], n * q.delta1 + (coarse - j0).float() * q.delta2())
    assert torch.allclose(q(x)[~fine], coarse.float() * q.delta2(), rtol=1e-6, atol=0)
    assert (x[fine] < (n - 0.5) * q.delta1).all() and (x[~fine] >= (n - 0.5) * q.delta1).all()


def test_log_quantizers_and_tanq_beat_4bit_uniform_on_softmax():
    """Softmax of Gaussian logits (sigma=2) over 197 tokens, 4 bits: every non-uniform
    post-softmax quantizer has a lower MSE than uniform (minmax and MSE-searched).
    (Not true for every distribution: with sigma=5 log2/logsqrt2 lose to it.)"""
    x = softmax_data(7, 2.0, rows=4)
    mse = {name: create_quantizer(name, bits=4).calibrate(x).mse(x) for name in UNSIGNED}
    uni_minmax = create_quantizer("uniform", bits=4, method="minmax").calibrate(x).mse(x)
    uni_mse = create_quantizer("uniform", bits=4, method="mse").calibrate(x).mse(x)
    assert uni_mse <= uni_minmax
    for name in ("log2", "logsqrt2", "adalog", "tanq"):
        assert mse[name] < uni_mse < uni_minmax, (name, mse, uni_mse)
    assert mse["adalog"] < 0.5 * uni_mse and mse["logsqrt2"] < 0.5 * uni_mse


@pytest.mark.parametrize(
    "name,options",
    [
        ("uniform", {"method": "minmax"}),
        ("uniform", {"method": "mse"}),
        ("uniform", {"method": "percentile"}),
        ("uniform", {"symmetric": True}),
        ("log2", {}),
        ("logsqrt2", {}),
        ("adalog", {}),
        ("tanq", {}),
        ("twin_uniform", {}),
    ],
)
def test_more_bits_never_worse(name, options):
    x = softmax_data(8, 2.0, rows=1)
    errs = [create_quantizer(name, bits=b, **options).calibrate(x).mse(x) for b in range(2, 9)]
    for lo_bits, hi_bits in zip(errs, errs[1:], strict=False):
        assert hi_bits <= lo_bits * (1 + 1e-6), errs


def test_more_bits_never_worse_uniform_gaussian_per_channel():
    w = weight_data(9, 16, 64, outliers=False)
    errs = [UniformQuantizer(b, symmetric=True, channel_axis=0).calibrate(w).mse(w) for b in range(2, 9)]
    assert all(b <= a for a, b in zip(errs, errs[1:], strict=False)), errs
