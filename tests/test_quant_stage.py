"""The recipe ``quant`` stage: parsing, and what the pipeline does with it (before measuring)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_ARGS
from vitslim.compress.quant import QuantConfig, is_quantized, quant_points
from vitslim.compress.quant.stage import QuantStage, quant_summary
from vitslim.errors import UserError
from vitslim.models import load_model
from vitslim.pipeline import StageContext, build_variants
from vitslim.recipes import list_recipes, load_recipe, parse_recipe

QUANT_RECIPES = ["w8a8", "w8a8-trt", "w6a6-log", "w4a4-uniform", "w4a4-adalog", "w4a4-tanq"]


def tiny_loaded():
    args = {k: v for k, v in TINY_ARGS.items() if k != "num_classes"}
    return load_model("vit_tiny_patch16_224", num_classes=2, pretrained=False, model_args=args)


def test_builtin_quant_recipes_exist_and_use_their_presets() -> None:
    for name in QUANT_RECIPES:
        assert name in list_recipes()
        stage = load_recipe(name).stages["quant"]
        assert stage.preset == name and stage.config == QuantConfig.preset(name)


def test_config_keys_override_the_preset_and_round_trip() -> None:
    stage = QuantStage.from_dict(
        {"preset": "w4a4-adalog", "config": {"overrides": {"head.*": None}}, "images": 8, "sequential": True}
    )
    assert stage.config.post_softmax.quantizer == "adalog" and stage.config.overrides == {"head.*": None}
    assert (stage.images, stage.sequential, stage.search) == (8, True, "mse")
    assert QuantStage.from_dict(stage.to_dict()) == stage
    assert stage.describe() == "w4a4-adalog (8 calibration images, mse search, sequential)"
    cosine = QuantStage.from_dict({"preset": "w8a8", "objective": "cosine", "images": 4})
    assert cosine.describe() == "w8a8 (4 calibration images, mse search, cosine objective)"
    assert QuantStage.from_dict({}).config == QuantConfig()  # W8A8 default


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"preset": 8}, "preset must be a string"),
        ({"config": [1]}, "config must be a mapping"),
        (
            {"config": {"weight": {"quantizer": "log2", "bits": 4}}},
            "weights need a symmetric uniform .or fp8. quantizer",
        ),
        ({"keep": -1}, "keep must be a positive integer"),
        ({"objective": "kl"}, "unknown objective 'kl'"),
    ],
)
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        QuantStage.from_dict(settings)


def test_pipeline_quantizes_a_copy_on_seeded_calibration_images(image_folder: Path) -> None:
    loaded = tiny_loaded()
    recipe = parse_recipe(
        {"stages": {"tokens": {"r": 2}, "quant": {"preset": "w8a8", "images": 4}}}, "inline.yaml", "inline"
    )
    ctx = StageContext(loaded, calib=str(image_folder), seed=3, progress=False, int8_saturates=False)
    tokens, quant = build_variants(loaded.model, recipe, ctx)
    reduced, quantized = tokens.model, quant.model
    assert (tokens.name, quant.name) == ("tokens", "quant")
    assert not is_quantized(loaded.model) and not is_quantized(reduced) and is_quantized(quantized)
    assert quant.description == "w8a8 (4 calibration images, mse search)" and quant.records == {}
    assert sum(b.shape[0] for b in ctx.calibration(4)) == 4
    summary = quant_summary(quantized)
    assert summary["images"] == 4 and summary["config"] == QuantConfig.preset("w8a8").to_dict()
    assert quant_summary(reduced) is None
    assert all(p.quantizer.calibrated for p in quant_points(quantized).values())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(quantized(x), reduced(x))  # quantization changed the outputs


def test_quant_stage_needs_calibration_data_for_user_models() -> None:
    loaded = tiny_loaded()
    recipe = parse_recipe({"stages": {"quant": {"preset": "w8a8"}}}, "inline.yaml", "inline")
    with pytest.raises(UserError, match="--calib is required"):
        build_variants(loaded.model, recipe, StageContext(loaded, progress=False))
