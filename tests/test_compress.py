"""`vitslim compress` and `vitslim info --recipe` end to end on tiny random ViTs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import assert_user_error, run
from vitslim.compress.tokens import TokenPruneConfig
from vitslim.recipes import list_recipes, load_recipe

TINY_DEPTH = 2
FAST = ["--runs", "2", "--warmup", "0", "--batch-sizes", "1,2", "--threads", "1"]


def tiny(depth: int = TINY_DEPTH) -> list[str]:
    """A random ViT with 8x8 patches on 64x64 inputs: 64 patch tokens + the class token."""
    args = {"img_size": 64, "patch_size": 8, "depth": depth, "embed_dim": 32, "num_heads": 2}
    model_args = [part for key, value in args.items() for part in ("--model-arg", f"{key}={value}")]
    return ["--model", "vit_tiny_patch16_224", "--random-init", "--num-classes", "2", *model_args]


def fits_tiny(name: str) -> bool:
    cfg = load_recipe(name).stages["tokens"]
    return not isinstance(cfg, TokenPruneConfig) or max(cfg.layers) < TINY_DEPTH


def check_report(report: dict, out: Path) -> None:
    """The report contract of a token recipe: fp32 first, the reduced model last, ONNX parity,
    latency of both runtimes at each batch, fewer tokens and FLOPs after reduction."""
    fp32, reduced = report["variants"]
    assert (fp32["name"], reduced["name"]) == ("fp32", "tokens")
    assert fp32["agreement"] == 1.0 and 0.0 <= reduced["agreement"] <= 1.0
    for variant in report["variants"]:
        assert variant["onnx"]["top1_agreement"] == 1.0 and variant["onnx"]["max_abs_diff"] < 1e-3
        assert {(lat["runtime"], lat["batch"]) for lat in variant["latency"]} == {
            (runtime, batch) for runtime in ("pytorch", "onnxruntime") for batch in (1, 2)
        }
        assert (out / variant["onnx"]["file"]).is_file()
    assert fp32["tokens_per_layer"] == [65] * (TINY_DEPTH + 1)
    tokens = reduced["tokens_per_layer"]
    assert tokens[0] == 65 and tokens[-1] < 65 and all(a >= b for a, b in zip(tokens, tokens[1:], strict=False))
    assert reduced["block_flops_per_image"] < fp32["block_flops_per_image"]
    assert sorted(p.name for p in out.iterdir()) == ["model_fp32.onnx", "model_tokens.onnx", "report.json", "report.md"]
    assert json.loads((out / "report.json").read_text()) == report


@pytest.mark.parametrize("name", list_recipes())
def test_builtin_recipes_end_to_end(tmp_path: Path, image_folder: Path, name: str) -> None:
    out = tmp_path / "out"
    args = ["compress", *tiny(), "--recipe", name, "--data", str(image_folder), *FAST, "--out", str(out)]
    if not fits_tiny(name):  # its layers lie beyond the tiny depth: a clear error, nothing written
        assert_user_error(run(*args), f"out of range for a model of depth {TINY_DEPTH}")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
        return
    result = run(*args, "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    check_report(report, out)
    assert report["recipe"]["name"] == name and report["recipe"]["stages"] == load_recipe(name).to_dict()["stages"]
    assert "| tokens | pytorch |" in result.output and "tokens per block 65 → " in result.output
    if report["recipe"]["stages"]["tokens"].get("schedule") == "constant":  # r >= 1 in every block
        tokens = report["variants"][-1]["tokens_per_layer"]
        assert all(a > b for a, b in zip(tokens, tokens[1:], strict=False))


def test_evit_recipe_file_end_to_end(tmp_path: Path, image_folder: Path) -> None:
    recipe = tmp_path / "evit.yaml"
    recipe.write_text("stages:\n  tokens: {method: evit, keep_rate: 0.5, layers: [0, 1]}\n")
    out = tmp_path / "out"
    result = run("compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), *FAST, "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    check_report(report, out)
    assert report["variants"][-1]["tokens_per_layer"] == [65, 34, 19]  # 32 kept + 1 fused + class; then 17 + 1 + 1
    assert report["variants"][-1]["description"] == "EViT keep 0.5 at layers 0,1"


@pytest.mark.parametrize(
    ("recipe_yaml", "message"),
    [
        ("stages: {tokns: {r: 8}}", "unknown key 'tokns' in recipe"),
        ("stages: {tokens: {r: [a]}}", "r must be an integer or a list of integers"),
        ("stages: {quant: {bits: 8}}", "is not available yet in this version"),
    ],
)
def test_recipe_errors_are_one_line(tmp_path: Path, recipe_yaml: str, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(recipe_yaml + "\n")
    assert_user_error(run("compress", *tiny(), "--recipe", str(recipe), "--out", str(tmp_path / "out")), message)
    assert_user_error(run("info", *tiny(), "--recipe", str(recipe)), message)
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_name_lists_builtins(tmp_path: Path) -> None:
    result = run("compress", *tiny(), "--recipe", "tome-r9", "--out", str(tmp_path / "out"))
    assert_user_error(result, "did you mean 'tome-r8'? built-in recipes: ")
    assert all(name in result.stderr for name in list_recipes())


def test_compress_refuses_non_empty_out(tmp_path: Path, image_folder: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    args = ["compress", *tiny(), "--recipe", "tome-r8", "--data", str(image_folder), "--out", str(tmp_path)]
    assert_user_error(run(*args), "already exists and is not empty")
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_compress_needs_data_for_timm_models(tmp_path: Path) -> None:
    assert_user_error(run("compress", *tiny(), "--recipe", "tome-r8", "--out", str(tmp_path / "o")), "--data")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["tome-r8", "evit-0.7"])
def test_info_recipe_shows_reduced_flops(tmp_path: Path, name: str) -> None:
    result = run("info", *tiny(depth=12), "--recipe", name, "--json", str(tmp_path / "i.json"))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "i.json").read_text())
    reduction = info["token_reduction"]
    assert info["recipe"]["name"] == name and info["tokens_per_layer"] == [65] * 13
    assert reduction["tokens_per_layer"][0] == 65 and reduction["tokens_per_layer"][-1] < 65
    assert 0 < reduction["block_flops"] < reduction["unreduced_block_flops"]
    assert reduction["flops_ratio"] == pytest.approx(reduction["block_flops"] / reduction["unreduced_block_flops"])
    assert "reduced vs" in result.output and " -> ".join(map(str, reduction["tokens_per_layer"])) in result.output
