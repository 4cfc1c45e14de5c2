"""Hugging Face transformers folders converted to timm ViTs, checked against transformers itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.hf_models import ARCHITECTURES, LABELS, SIZE, hf_output, save_hf_model
from vitslim.errors import UserError
from vitslim.models import load_model
from vitslim.models.hf_folder import data_config

TIMM_CLASS = {
    "DeiTForImageClassificationWithTeacher": "VisionTransformerDistilled",
    "Dinov2ForImageClassification": "ClassAndMeanPoolViT",
    "Dinov2WithRegistersForImageClassification": "ClassAndMeanPoolViT",
}


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_folder_matches_transformers(tmp_path: Path, architecture: str) -> None:
    hf = save_hf_model(architecture, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    expected = hf_output(hf, images)
    with torch.no_grad():
        got = loaded.model(images)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4
    assert float(expected.abs().max()) > 0.1  # outputs large enough for a wrong conversion to show
    assert type(loaded.model).__name__ == TIMM_CLASS.get(architecture, "VisionTransformer")
    assert loaded.input_size == (3, SIZE, SIZE) and not loaded.model.training
    classifier = "Model" not in architecture
    assert loaded.num_classes == (3 if classifier else 0)
    assert loaded.class_names == (list(LABELS.values()) if classifier else None)
    assert loaded.source.startswith(f"Hugging Face {architecture} folder ")


def test_a_wrong_conversion_would_show(tmp_path: Path) -> None:
    """The comparison above can fail: a DINOv2 folder whose layer-scales are swapped differs."""
    hf = save_hf_model("Dinov2Model", tmp_path / "model")
    path = tmp_path / "model" / "model.safetensors"
    state = safetensors.torch.load_file(path)
    a, b = "encoder.layer.0.layer_scale1.lambda1", "encoder.layer.0.layer_scale2.lambda1"
    state[a], state[b] = state[b], state[a]
    safetensors.torch.save_file(state, path)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = load_model(str(tmp_path / "model")).model(images)
    assert float((got - hf_output(hf, images)).abs().max()) > 1e-2


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        (  # ViTImageProcessor: squash to 224, mean/std 0.5
            {"size": {"height": 224, "width": 224}, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
            {"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear"},
        ),
        (  # DeiTImageProcessor: squash to 256, crop 224
            {"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
            {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "squash", "interpolation": "bicubic"},
        ),
        (  # BitImageProcessor (DINOv2): shortest edge 256, crop 224
            {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
            {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic"},
        ),
    ],
)
def test_preprocessing_from_the_processor_config(processor: dict, expected: dict) -> None:
    config = data_config({"resample": 3, "rescale_factor": 1 / 255, **processor}, "preprocessor_config.json")
    assert config["crop_pct"] == pytest.approx(expected.pop("crop_pct"))
    assert {k: config[k] for k in expected} == expected
    mean = processor.get("image_mean", [0.485, 0.456, 0.406])
    assert config["mean"] == pytest.approx(mean)


def test_rescale_and_normalisation_fold_into_mean_and_std() -> None:
    size = {"size": {"height": 32, "width": 32}}
    raw = data_config({**size, "do_rescale": False, "image_mean": [127.5] * 3, "image_std": [127.5] * 3}, "p")
    assert raw["mean"] == pytest.approx((0.5,) * 3) and raw["std"] == pytest.approx((0.5,) * 3)
    plain = data_config({**size, "do_normalize": False}, "p")
    assert plain["mean"] == (0.0, 0.0, 0.0) and plain["std"] == pytest.approx((1.0,) * 3)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_folder_mistakes_are_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    save_hf_model("ViTForImageClassification", folder)
    (folder / "preprocessor_config.json").rename(tmp_path / "pp.json")
    (tmp_path / "pp.json").write_text(json.dumps({"size": {"height": 48, "width": 48}}))
    (tmp_path / "pp.json").rename(folder / "preprocessor_config.json")
    with pytest.raises(UserError, match=r"preprocessing gives \(48, 48\) images but ViTForImageClassification takes"):
        load_model(str(folder))
    _edit_json(folder / "config.json", architectures=["SwinForImageClassification"], model_type="swin")
    with pytest.raises(UserError, match="holds SwinForImageClassification; supported Hugging Face models: ViTModel"):
        load_model(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(UserError, match="has no config.json: not a Hugging Face model folder"):
        load_model(str(folder))
    save_hf_model("ViTModel", tmp_path / "vit")
    with pytest.raises(UserError, match="cannot be used with a Hugging Face folder"):
        load_model(str(tmp_path / "vit"), num_classes=3)


def test_unknown_weights_and_missing_weights(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    save_hf_model("DeiTModel", folder)
    path = folder / "model.safetensors"
    state = safetensors.torch.load_file(path)
    state["encoder.layer.0.attention.attention.rotary.weight"] = torch.zeros(2)
    safetensors.torch.save_file(state, path)
    with pytest.raises(UserError, match="unexpected weight encoder.layer.0.attention.attention.rotary.weight"):
        load_model(str(folder))
    del state["encoder.layer.0.attention.attention.rotary.weight"], state["encoder.layer.1.output.dense.weight"]
    safetensors.torch.save_file(state, path)
    with pytest.raises(UserError, match=r"does not fit VisionTransformer: missing keys \(1\): blocks\.1\.mlp\.fc2\."):
        load_model(str(folder))
    path.unlink()
    with pytest.raises(UserError, match="has no weights"):
        load_model(str(folder))
