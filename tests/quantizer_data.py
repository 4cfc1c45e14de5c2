"""Data and checks shared by the quantizer tests: softmax-, GELU- and weight-like tensors, and the
properties every quantizer must have."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from vitslim.compress.quant import Quantizer

ALL = ["adalog", "log2", "logsqrt2", "tanq", "twin_uniform", "uniform"]
UNSIGNED = ["adalog", "log2", "logsqrt2", "tanq", "twin_uniform"]
LOGS = ["adalog", "log2", "logsqrt2"]


PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def softmax_data(seed: int, sigma: float = 2.0, rows: int = 8, tokens: int = 197) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, tokens, tokens, generator=g) * sigma, dim=-1)


def gelu_data(seed: int, n: int = 4096) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.gelu(torch.randn(n, generator=g) * 2.0)


def weight_data(seed: int, out: int, inp: int, outliers: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.rand(out, 1, generator=g)
    if outliers:
        w[0, 0] = 20.0
    return w


def probe_points(x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """Calibration values plus points below, between and above them (sorted)."""
    top = float(x.max())
    extra = torch.linspace(-shift - 0.5, 1.5 * top + 0.1, 2001)
    return torch.sort(torch.cat([x.reshape(-1), extra, torch.zeros(3)])).values


def check_common(q: Quantizer, x: torch.Tensor) -> None:
    """Properties every calibrated quantizer has on its calibration data."""
    y = q(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    # idempotence
    assert torch.equal(q(y), y)
    # codes: int32, inside the b-bit range, round trip
    codes = q.quantize(x)
    lo, hi = q.code_range()
    assert codes.dtype == torch.int32
    assert hi - lo + 1 <= 2**q.bits
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    assert torch.equal(q.dequantize(codes).to(x.dtype), y)
    # at most 2^b distinct levels (per channel for per-channel quantizers)
    axis = getattr(q, "channel_axis", None)
    if axis is None:
        assert torch.unique(y).numel() <= 2**q.bits
    else:
        rows = y.movedim(axis, 0).reshape(y.shape[axis], -1)
        for r in rows:
            assert torch.unique(r).numel() <= 2**q.bits
    # the search's bucket arithmetic agrees with the real error
    if q.search_mse is not None and axis is None:
        assert q.search_mse == pytest.approx(q.mse(x), rel=1e-3, abs=1e-12)
