"""Hugging Face CLIP and SigLIP vision towers converted to timm ViTs, checked against transformers,
and run from the command line through every stage."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import safetensors.torch
import torch

from tests.helpers import run_cli
from tests.hf_models import SIZE
from tests.hf_towers import TOWERS, save_hf_tower, tower_outputs
from tests.test_zoo import ALL_STAGES, FAST, check_report
from vitslim.errors import UserError
from vitslim.models import load_model


def _timm_outputs(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        tokens = model.forward_features(images)
        return model.forward_head(tokens), tokens[:, model.num_prefix_tokens :]


@pytest.mark.parametrize("architecture", list(TOWERS))
def test_tower_matches_transformers(tmp_path: Path, architecture: str) -> None:
    hf = save_hf_tower(architecture, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pooled, patches = tower_outputs(hf, images)
    got_pooled, got_patches = _timm_outputs(loaded.model, images)
    assert got_pooled.shape == pooled.shape and got_patches.shape == patches.shape == (3, (SIZE // 8) ** 2, 32)
    assert float((got_pooled - pooled).abs().max()) <= 1e-4 and float((got_patches - patches).abs().max()) <= 1e-4
    assert float(pooled.abs().max()) > 0.1
    assert loaded.num_classes == 0 and loaded.class_names is None
    siglip = TOWERS[architecture][0] == "siglip"
    assert loaded.model.global_pool == ("map" if siglip else "token")
    assert loaded.model.num_prefix_tokens == (0 if siglip else 1)
    assert loaded.data_config["mean"] == pytest.approx((0.5,) * 3 if siglip else (0.48145466, 0.4578275, 0.40821073))


def test_a_wrong_tower_conversion_would_show(tmp_path: Path) -> None:
    """The comparison above can fail: a SigLIP folder whose head's query and key projections are swapped differs."""
    hf = save_hf_tower("SiglipVisionModel", tmp_path / "model")
    path = tmp_path / "model" / "model.safetensors"
    state = safetensors.torch.load_file(path)
    key = next(k for k in state if k.endswith("head.attention.in_proj_weight"))
    state[key] = torch.cat([state[key][32:64], state[key][:32], state[key][64:]])
    safetensors.torch.save_file(state, path)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pooled, _ = _timm_outputs(load_model(str(tmp_path / "model")).model, images)
    assert float((pooled - tower_outputs(hf, images)[0]).abs().max()) > 1e-2


def test_non_vit_towers_are_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    save_hf_tower("CLIPModel", folder)
    config = json.loads((folder / "config.json").read_text())
    for architecture in ("AlignModel", "Siglip2VisionModel"):  # EfficientNet tower; NaFlex variable patches
        (folder / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
        with pytest.raises(UserError, match=f"holds {architecture}; supported Hugging Face models: .*CLIPModel"):
            load_model(str(folder))
    save_hf_tower("SiglipVisionModel", tmp_path / "siglip")
    path = tmp_path / "siglip" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "vision_use_head": False}))
    with pytest.raises(UserError, match="without their attention-pool head"):
        load_model(str(tmp_path / "siglip"))


def test_tower_through_every_stage(tmp_path: Path, image_folder: Path) -> None:
    """A full SigLIP model (no class token, attention-pool head) with both feature outputs; timm's
    CLIP tower runs every recipe in test_zoo."""
    architecture = "SiglipModel"
    save_hf_tower(architecture, tmp_path / "model")
    recipe = tmp_path / "all-stages.yaml"
    recipe.write_text(ALL_STAGES)
    out = tmp_path / "out"
    args = ["compress", "--model", str(tmp_path / "model"), "--recipe", str(recipe), "--output", "both"]
    result = run_cli(*args, "--data", str(image_folder), "--calib", str(image_folder), *FAST, "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"].startswith(f"Hugging Face {architecture} folder")
    check_report(report, "all-stages", classifier=False)
    for variant in report["variants"]:  # the unmerged patch map keeps fp32's shape after merging
        assert variant["outputs"] == {"pooled": [32], "patch": [16, 32]}
        assert variant["onnx"]["cosine"] > 0.99 and 0.5 < variant["features"]["pooled_cosine"] <= 1.0 + 1e-9
    graph = onnx.load(str(out / "model_quant.onnx")).graph
    assert [o.name for o in graph.output] == ["pooled", "patch"]
    assert "Feature fidelity vs fp32" in (out / "report.md").read_text()
    assert "Feature fidelity against fp32" in (out / "report.html").read_text()


def test_export_and_eval_feature_outputs(tmp_path: Path, image_folder: Path) -> None:
    pytest.importorskip("openvino")
    save_hf_tower("CLIPVisionModelWithProjection", tmp_path / "model")
    path = tmp_path / "clip.onnx"
    result = run_cli("export", "--model", str(tmp_path / "model"), "--out", str(path), "--output", "both")
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" not in result.output and [o.name for o in onnx.load(str(path)).graph.output] == [
        "pooled",
        "patch",
    ]
    args = ["eval", "--model", str(tmp_path / "model"), "--data", str(image_folder), "--onnx", str(path)]
    result = run_cli(*args, "--output", "both", "--runtime", "openvino")
    assert result.exit_code == 0, result.output
    assert "patch_cosine=1.0000" in result.output and "openvino:clip.onnx" in result.output
    result = run_cli(*args, "--output", "pooled")
    assert result.exit_code != 0 and "export it with the same --output" in result.output
