"""The model zoo: tiny random timm ViTs of every supported configuration, each saved as a
checkpoint (timm's own format or the original one timm converts) and run from the command line
through the w8a8, tome-r8, sparse24-w8a8 and full recipes, with ONNX export and ONNX Runtime
parity; Hugging Face folders of each supported class through one recipe of every stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import timm
import torch

from tests.checkpoint_formats import dinov2_original, openai_clip, write_big_vision_npz
from tests.helpers import assert_user_error, run_cli, write_class_folder
from tests.hf_models import ARCHITECTURES, save_hf_model
from vitslim.errors import UserError

RECIPES = ["w8a8", "tome-r8", "sparse24-w8a8", "full"]
FAST = ["--runs", "2", "--warmup", "0", "--batch-sizes", "1", "--threads", "1", "--runtime", "onnxruntime"]
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@dataclass(frozen=True)
class ZooModel:
    """A timm configuration: ``args`` build the checkpoint, ``load_args`` (default ``args``) load it."""

    name: str
    args: dict[str, Any]
    fmt: str = "timm"  # timm (safetensors), dinov2 / openai (original .pth), npz (big_vision)
    num_classes: int = 3
    load_args: dict[str, Any] = field(default_factory=dict)


ZOO = {
    "cls_distill_tokens": ZooModel("deit_tiny_distilled_patch16_224", {"img_size": 64, "patch_size": 16}),
    "registers_dinov2": ZooModel("vit_small_patch14_reg4_dinov2", {"img_size": 56, "patch_size": 14}, "dinov2", 0),
    "avg_pool_no_cls": ZooModel(
        "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "class_token": False, "global_pool": "avg"}
    ),
    "attention_pool_siglip": ZooModel("vit_base_patch16_siglip_224", {"img_size": 64, "patch_size": 16}),
    "qk_norm": ZooModel("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "qk_norm": True}),
    "swiglu_mlp": ZooModel("vit_giant_patch14_dinov2", {"img_size": 56, "patch_size": 14, "embed_dim": 48}),
    "layer_scale_deit3": ZooModel("deit3_small_patch16_224", {"img_size": 64, "patch_size": 16}),
    "pre_norm_clip": ZooModel("vit_base_patch32_clip_quickgelu_224", {"img_size": 128, "patch_size": 32}, "openai"),
    "patch8_big_vision": ZooModel("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, "npz"),
    "non_square": ZooModel("vit_tiny_patch16_224", {"img_size": (32, 48), "patch_size": 8}),
    "other_img_size": ZooModel(
        "vit_small_patch16_224", {"img_size": 32, "patch_size": 8}, load_args={"img_size": 48, "patch_size": 8}
    ),
}


def _build(entry: ZooModel) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(entry.name, num_classes=entry.num_classes, **{**TINY, **entry.args}).eval()
    with torch.no_grad():  # matrices at std 1/sqrt(fan-in): attention that is not uniform, tokens that merge unevenly
        for name, param in model.named_parameters():
            if param.ndim == 2 and name.startswith("blocks"):
                param.normal_(0.0, param.shape[1] ** -0.5)
        if entry.fmt == "openai":
            model.head.bias.zero_()  # CLIP's projection has no bias
    return model


def _save(entry: ZooModel, model: torch.nn.Module, folder: Path) -> Path:
    if entry.fmt == "npz":
        return write_big_vision_npz(model, folder / "model.npz")
    if entry.fmt in ("dinov2", "openai"):
        path = folder / "model.pth"
        torch.save(dinov2_original(model) if entry.fmt == "dinov2" else openai_clip(model), path)
        return path
    path = folder / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint per zoo configuration, written once for the module."""
    root = tmp_path_factory.mktemp("zoo")
    paths = {}
    for key, entry in ZOO.items():
        (root / key).mkdir()
        paths[key] = _save(entry, _build(entry), root / key)
    return paths


@pytest.fixture(scope="module")
def zoo_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("zoo_images"), classes=("a", "b", "c"), per_class=2)


def _model_args(entry: ZooModel) -> list[str]:
    args = {**TINY, **entry.args, **entry.load_args}
    return [part for key, value in args.items() for part in ("--model-arg", f"{key}={json.dumps(value)}")]


def check_report(report: dict, recipe: str, classifier: bool) -> None:
    """Every stage measured and exported; ONNX Runtime agrees with PyTorch; the stages did their job."""
    stages = [s for s in report["recipe"]["stages"] if s in ("tokens", "sparsity", "quant")]
    fp32, *variants = report["variants"]
    assert [v["name"] for v in report["variants"]] == ["fp32", *stages] and report["recipe"]["name"] == recipe
    assert report["validation_failures"] == []
    for variant in report["variants"]:
        onnx = variant["onnx"]
        assert onnx["validation"]["passed"], onnx
        assert onnx["top1_agreement"] == (1.0 if classifier else None), onnx
        # quantized graphs: ORT and PyTorch may round a value to neighbouring codes (see test_compress)
        assert onnx["max_abs_diff"] < (1e-4 if variant["quantization"] is None else 5e-2), onnx
    tokens = variants[-1]["tokens_per_layer"]
    if "tokens" in stages:
        assert tokens[-1] < tokens[0] == fp32["tokens_per_layer"][0]
    else:
        assert tokens == fp32["tokens_per_layer"]
    if "sparsity" in stages:
        check = variants[-1]["sparsity"]
        assert check["layers"] > 0 and check["pattern_in_model"] == check["pattern_in_onnx"] == check["layers"]
    if "quant" in stages:
        assert len(variants[-1]["quantization"]["sites"]) > 0


#: the short form ``make test`` runs: every configuration through ``full`` (tokens, 2:4 and mixed
#: precision), each other recipe on two configurations; ``make test-all`` runs every pair (``slow``)
SHORT_FORM = {
    "full": tuple(ZOO),
    "w8a8": ("registers_dinov2", "non_square"),
    "tome-r8": ("cls_distill_tokens", "avg_pool_no_cls"),
    "sparse24-w8a8": ("swiglu_mlp", "patch8_big_vision"),
}


def _zoo_cases() -> list:
    return [
        pytest.param(key, recipe, id=f"{key}-{recipe}", marks=() if key in SHORT_FORM[recipe] else pytest.mark.slow)
        for key in ZOO
        for recipe in RECIPES
    ]


@pytest.mark.parametrize(("key", "recipe"), _zoo_cases())
def test_zoo_checkpoint_through_recipe(tmp_path: Path, zoo: dict, zoo_images: Path, key: str, recipe: str) -> None:
    entry = ZOO[key]
    out = tmp_path / "out"
    args = ["compress", "--model", entry.name, "--checkpoint", str(zoo[key]), *_model_args(entry)]
    args += ["--recipe", recipe, "--data", str(zoo_images), "--calib", str(zoo_images), *FAST, "--out", str(out)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"] == f"checkpoint {zoo[key]}"
    check_report(report, recipe, classifier=entry.num_classes > 0)


#: every stage, few images: one run per Hugging Face class
ALL_STAGES = (
    "name: all-stages\nstages:\n  tokens: {r: 2}\n"
    "  sparsity: {method: magnitude, include: ['blocks.*.mlp.fc2']}\n  quant: {preset: w8a8, images: 4}\n"
)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_hugging_face_folder_through_every_stage(tmp_path: Path, zoo_images: Path, architecture: str) -> None:
    save_hf_model(architecture, tmp_path / "model")
    recipe = tmp_path / "all-stages.yaml"
    recipe.write_text(ALL_STAGES)
    out = tmp_path / "out"
    args = ["compress", "--model", str(tmp_path / "model"), "--recipe", str(recipe)]
    result = run_cli(*args, "--data", str(zoo_images), "--calib", str(zoo_images), *FAST, "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"].startswith(f"Hugging Face {architecture} folder")
    check_report(report, "all-stages", classifier="Model" not in architecture)


def test_dinov2_registers_headless_at_native_518_px(tmp_path: Path, zoo_images: Path) -> None:
    """The issue's run: a headless timm DINOv2-with-registers checkpoint at its default 518 px through
    w8a8 (a TypeError after calibration before)."""
    model = timm.create_model("vit_small_patch14_reg4_dinov2", depth=1, embed_dim=32, num_heads=2).eval()
    path = tmp_path / "dinov2.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    args = ["--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2"]
    out = tmp_path / "out"
    result = run_cli(
        "compress", "--model", "vit_small_patch14_reg4_dinov2", "--checkpoint", str(path), *args, "--recipe",
        "w8a8", "--data", str(zoo_images), "--calib", str(zoo_images), *FAST, "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_size"] == [3, 518, 518] and report["variants"][0]["tokens_per_layer"][0] == 1374
    check_report(report, "w8a8", classifier=False)
    assert "cosine" in result.output


def test_nan_checkpoint_is_one_error_line_in_seconds(tmp_path: Path, zoo: dict, zoo_images: Path) -> None:
    entry = ZOO["qk_norm"]
    state = {k: v.clone() for k, v in safetensors.torch.load_file(zoo["qk_norm"]).items()}
    state["blocks.0.norm1.weight"][5] = float("nan")
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(state, path)
    out = tmp_path / "out"
    args = ["compress", "--model", entry.name, "--checkpoint", str(path), *_model_args(entry), "--recipe", "w8a8"]
    result = run_cli(*args, "--data", str(zoo_images), "--calib", str(zoo_images), "--out", str(out))
    assert_user_error(result, "tensor blocks.0.norm1.weight (32,) holds 1 NaN or infinite value")
    assert not out.exists()


def test_unsupported_architecture_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli("compress", "--model", "swin_tiny_patch4_window7_224", "--random-init", "--recipe", "w8a8",
                 "--out", str(tmp_path / "out"))  # fmt: skip
    assert_user_error(result, "swin_tiny_patch4_window7_224 is a swin_transformer model, not a plain ViT")
    assert "vitslim supports plain timm Vision Transformers" in result.stderr


@pytest.mark.parametrize(
    ("input_size", "poison", "message"),
    [
        ((3, 40, 40), False, r"tiny fails on a \(3, 40, 40\) image of .*zoo_images"),
        ((3, 32, 32), True, "tiny gives NaN or infinite outputs on an image of"),
    ],
)
def test_preflight_fails_before_any_stage(
    tmp_path: Path, zoo_images: Path, monkeypatch: pytest.MonkeyPatch, input_size: tuple, poison: bool, message: str
) -> None:
    """A model that does not take the preprocessed images, or gives NaN on them, fails on one image
    before any stage runs (calibration would take minutes on a real model)."""
    from vitslim.models import LoadedModel
    from vitslim.pipeline import Evaluation, compress
    from vitslim.recipes import load_recipe

    def no_stage(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a stage ran before the preflight checks failed")

    monkeypatch.setattr("vitslim.pipeline.run.build_variants", no_stage)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, **TINY).eval()
    if poison:
        with torch.no_grad():
            model.blocks[1].attn.proj.bias[0] = float("inf")
    config = {"input_size": input_size, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    loaded = LoadedModel(model, "tiny", "test", {**config, "crop_pct": 1.0, "crop_mode": "center"}, 3)
    with pytest.raises(UserError, match=message):
        evaluation = Evaluation(data=str(zoo_images), calib=str(zoo_images))
        compress(loaded, load_recipe("full"), tmp_path / "out", evaluation=evaluation)
    assert not (tmp_path / "out").exists()
