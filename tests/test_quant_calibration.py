"""Calibration of placed quantizers: searches, objectives, sequential mode, data, determinism."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import cosine, images, meaningful_vit, run, uniform_cfg
from vitslim.compress.calibration.batches import calibration_batches
from vitslim.compress.quant import QuantConfig, SiteSpec, quant_points, quantization_info, quantize_
from vitslim.compress.quant.samplers import collect_rows
from vitslim.compress.quant.search import _progressive
from vitslim.errors import UserError


def log_cfg(bits: int) -> QuantConfig:
    return QuantConfig.log(bits, bits, softmax="adalog", gelu="adalog")


def test_same_seed_same_model():
    model = meaningful_vit("dinov2_reg")
    x = images(4, seed=9)
    outs, states = [], []
    for _ in range(2):
        q = quantize_(
            copy.deepcopy(model),
            log_cfg(4),
            images(8),
            search="progressive",
            sequential=True,
            seed=3,
            samples=40,
            progress=False,
        )
        outs.append(run(q, x))
        states.append(q.state_dict())
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize(
    ("search", "objective"),
    [
        ("mse", "mse"),
        ("mse", "cosine"),
        ("progressive", "mse"),
        ("progressive", "cosine"),
        ("minmax", "mse"),
        ("percentile", "mse"),
    ],
)
def test_searches_and_objectives(search, objective):
    model = meaningful_vit("vit")
    x = images(8, seed=2)
    q = quantize_(copy.deepcopy(model), log_cfg(6), images(8), search=search, objective=objective, progress=False)
    info = quantization_info(q)
    activation_sites = [n for n in quant_points(q) if not n.endswith(".weight")]
    assert sorted(info["site_errors"]) == sorted(activation_sites)
    assert all(math.isfinite(e) and e >= 0 for e in info["site_errors"].values())
    assert info["search"] == search and info["objective"] == objective and info["images"] == 8
    assert cosine(run(q, x), run(model, x)) > 0.97


def test_output_error_search_beats_minmax_on_average():
    model = meaningful_vit("vit")
    errors = {}
    for search in ("minmax", "mse", "progressive"):
        q = quantize_(copy.deepcopy(model), uniform_cfg(8, 4), images(8), search=search, progress=False)
        errors[search] = quantization_info(q)["site_errors"]
    for search in ("mse", "progressive"):
        assert sum(errors[search].values()) < 0.8 * sum(errors["minmax"].values())


def test_minmax_range_covers_everything_seen():
    model = meaningful_vit("vit")
    seen = []
    handle = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = images(8)
    run(model, x)
    handle.remove()
    cfg = QuantConfig(None, None, None, None, None, None, SiteSpec("uniform", 8))
    quantize_(model, cfg, x, search="minmax", progress=False)
    lo, hi = model.head.input_quant.quantizer.clip_range()
    data = torch.cat(seen)
    step = float(model.head.input_quant.quantizer.scale)
    assert float(lo) <= float(data.min()) + step and float(hi) >= float(data.max()) - step


def test_sequential_runs_block_by_block():
    model = meaningful_vit("vit")
    fp = copy.deepcopy(model)
    calls = [0, 0]
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda *_args, i=i: calls.__setitem__(i, calls[i] + 1))
    batches = [images(4, seed=1), images(4, seed=2)]
    q = quantize_(model, uniform_cfg(8, 4), batches, sequential=True, progress=False)
    # block 0's stage stops after block 0, block 1's after block 1, the head's stage runs through
    assert calls == [3 * len(batches), 2 * len(batches)]
    x = images(8, seed=3)
    assert quantization_info(q)["sequential"] is True
    assert cosine(run(q, x), run(fp, x)) > 0.8


def test_calibration_data_forms():
    x = images(6)
    loader = DataLoader(TensorDataset(x, torch.zeros(6, dtype=torch.long)), batch_size=4)
    batches = calibration_batches(loader)
    assert [b.shape[0] for b in batches] == [4, 2] and torch.equal(torch.cat(batches), x)
    assert len(calibration_batches(x)) == 1 and len(calibration_batches([x[:3], x[3:]])) == 2
    for bad in ([], [torch.zeros(3, 4)], "images"):
        with pytest.raises(UserError):
            calibration_batches(bad)
    a = quantize_(meaningful_vit("vit"), uniform_cfg(8, 8), loader, progress=False)
    b = quantize_(meaningful_vit("vit"), uniform_cfg(8, 8), [x[:4], x[4:]], progress=False)
    assert torch.equal(run(a, x), run(b, x))


def test_samples_cap_memory():
    model = meaningful_vit("vit")
    x = images(8)  # 8 images x 17 tokens = 136 rows
    full = []
    handle = model.blocks[0].norm1.register_forward_hook(lambda _m, _i, out: full.append(out.reshape(-1, 64)))
    rows = collect_rows(model, {"n": model.blocks[0].norm1}, [x[:4], x[4:]], samples=50, seed=0)["n"]
    handle.remove()
    full = torch.cat(full)
    assert rows.shape == (52, 64)
    torch.testing.assert_close(rows[-2], full.amin(0))
    torch.testing.assert_close(rows[-1], full.amax(0))
    assert all(bool((full == r).all(1).any()) for r in rows[:-2])  # sampled rows are real rows


def test_progressive_search_is_coarse_to_fine():
    shape = (74, 16)  # AdaLog's grid: k x scale steps
    target = (51, 3)
    visited = []

    def score(i):
        visited.append(i)
        return (i[0] - target[0]) ** 2 + 4.0 * (i[1] - target[1]) ** 2

    assert _progressive(shape, score, keep=4) == target
    assert len(set(visited)) == len(visited) < 0.2 * shape[0] * shape[1]


def test_progress_bar(capsys):
    quantize_(meaningful_vit("vit"), uniform_cfg(8, 8), images(2), progress=True)
    assert "calibrating" in capsys.readouterr().err
