"""The `export` and `validate` recipe stages: settings, judging parity, the PyTorch noise floor."""

from __future__ import annotations

import math

import pytest

from tests.helpers import tiny_vit
from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.errors import UserError
from vitslim.evaluate.data import EvalData, evaluate_torch
from vitslim.evaluate.parity import noise_floor
from vitslim.export.stages import ExportStage
from vitslim.export.validate import ValidateStage, excess_disagreement_p


def test_defaults_and_round_trip() -> None:
    stage = ValidateStage()
    assert (stage.min_agreement, stage.max_abs_diff, stage.noise_floor, stage.significance) == (0.99, None, True, 0.01)
    assert ValidateStage.from_dict(stage.to_dict()) == stage
    assert ExportStage.from_dict({"tensorrt": True}) == ExportStage(tensorrt=True, fp16=True)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_agreement": 1.5}, "min_agreement must be a fraction"),
        ({"significance": -0.1}, "significance must be a fraction"),
        ({"noise_floor": "yes"}, "noise_floor must be true or false"),
        ({"max_abs_diff": 0}, "max_abs_diff must be a positive number"),
        ({"min_agreemnt": 0.9}, "did you mean 'min_agreement'"),
    ],
)
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ValidateStage.from_dict(settings)


def test_excess_disagreement_p_value() -> None:
    assert excess_disagreement_p(1.0, 1.0, 100) == 1.0  # no disagreement at all
    assert excess_disagreement_p(0.97, 0.98, 100) == pytest.approx(sum(math.comb(5, k) for k in (3, 4, 5)) / 32)
    assert excess_disagreement_p(0.90, 1.0, 100) == pytest.approx(2**-10)  # 10 vs 0: p ~ 0.001


def test_failures_against_threshold_and_noise_floor() -> None:
    stage = ValidateStage(min_agreement=0.99)
    good = {"top1_agreement": 1.0, "max_abs_diff": 1.0, "samples": 200}
    low = {"top1_agreement": 0.97, "max_abs_diff": 1.0, "samples": 200}
    assert not stage.needs_noise_floor(good) and stage.failures(good) == []
    assert stage.needs_noise_floor(low) and stage.failures(low) == ["top-1 agreement 97.00% < 99.00%"]
    assert stage.failures(low, floor=0.98) == []  # 6 vs 4 disagreements: float noise explains it
    assert stage.failures(low, floor=1.0) == []  # 6 vs 0: p = 1/64, not significant at 1%
    worse = {**low, "top1_agreement": 0.95}  # 10 vs 0: p = 1/1024
    assert "significantly under PyTorch's own noise floor 100.00% (p = 0.00098)" in stage.failures(worse, floor=1.0)[0]
    assert not ValidateStage(noise_floor=False).needs_noise_floor(low)
    assert not stage.needs_noise_floor({"top1_agreement": None, "max_abs_diff": 0.1, "samples": 8})  # headless
    assert ValidateStage(max_abs_diff=0.5).failures(good) == ["max abs diff 1 > 0.5"]


def test_noise_floor_of_a_float_model_is_perfect_agreement(image_folder) -> None:
    model = tiny_vit()
    dataset = load_dataset(str(image_folder), transform=build_transform({"input_size": (3, 32, 32)}))
    data = EvalData("images", make_loader(dataset, batch_size=4, seed=0), True, 0)
    outputs = evaluate_torch(model, data, threads=1, progress=False)
    floor = noise_floor(model, data, outputs, threads=1, progress=False)
    assert floor["agreement"] == 1.0 and 0 < floor["max_abs_diff"] < 1e-4 and floor["relative_input_noise"] == 1e-6
