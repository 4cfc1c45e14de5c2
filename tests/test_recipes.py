"""Recipes: built-ins found by name (source tree and installed data files), validation errors."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from vitslim.compress.tokens import TokenMergeConfig, TokenPruneConfig
from vitslim.errors import UserError
from vitslim.recipes import BUILTIN_DIR, list_recipes, load_recipe, parse_recipe
from vitslim.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
REPO_RECIPES = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def test_builtins_are_listed_loadable_and_documented() -> None:
    assert {"tome-r8", "evit-0.7"} <= set(list_recipes())
    assert set(REPO_RECIPES) <= set(list_recipes())
    readme = (BUILTIN_DIR / "README.md").read_text()
    for name in REPO_RECIPES:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description and recipe.stages
        assert f"`{name}`" in readme
    tome = load_recipe("tome-r8").stages["tokens"]
    assert tome == TokenMergeConfig(r=8, schedule="constant", proportional_attention=True)
    assert load_recipe("evit-0.7").stages["tokens"] == TokenPruneConfig(keep_rate=0.7, layers=(3, 6, 9))


def test_pyproject_ships_every_builtin_as_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vitslim"]
    packaged = {Path(p).stem for pattern in patterns for p in glob.glob(pattern, root_dir=BUILTIN_DIR.parent)}
    assert set(REPO_RECIPES) <= packaged and BUILTIN_DIR.parent == ROOT / "vitslim"


def test_recipe_from_file_keeps_pipeline_order(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("description: mine\nstages:\n  tokens:\n    method: evit\n    keep_rate: 0.5\n    layers: [1]\n")
    recipe = load_recipe(path)
    assert recipe.name == "mine" and recipe.source == str(path)
    assert recipe.to_dict()["stages"] == {
        "tokens": {
            "method": "evit",
            "keep_rate": 0.5,
            "layers": [1],
            "proportional_attention": True,
            "class_token_last_block": False,
        }
    }
    assert list(recipe.stages) == [s for s in STAGES.names if s in recipe.stages]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages: {tokns: {r: 8}}", "unknown key 'tokns' in recipe bad.yaml (stages); did you mean 'tokens'?"),
        ("stage: {tokens: {r: 8}}", "unknown key 'stage' in recipe bad.yaml; did you mean 'stages'?"),
        ("stages: {tokens: {rr: 8}}", "recipe bad.yaml (stages.tokens): unknown key 'rr'; did you mean 'r'?"),
        ("stages: {tokens: {method: evit, keep_rat: 0.5}}", "did you mean 'keep_rate'?"),
        (
            "stages: {tokens: {method: tomee}}",
            "unknown method 'tomee'; did you mean 'tome'? (available: tome, evit, prunemerge)",
        ),
        ("stages: {tokens: {r: eight}}", "r must be an integer or a list of integers, got 'eight' (str)"),
        ("stages: {tokens: {proportional_attention: 'yes'}}", "proportional_attention must be true or false"),
        ("stages: {tokens: {method: evit, layers: 3}}", "layers must be a list of integers, got 3 (int)"),
        ("stages: {tokens: {method: evit, keep_rate: 1.5}}", "(stages.tokens): keep_rate must be in (0, 1]"),
        ("stages: {tokens: 8}", "stages.tokens must be a mapping of settings"),
        ("stages: {quant: {imags: 8}}", "(stages.quant): unknown key 'imags'; did you mean 'images'?"),
        ("stages: {quant: {bits: 8}}", "unknown key 'bits' (allowed: preset, config, images"),
        ("stages: {quant: {preset: w8a9}}", "(stages.quant): unknown quantization preset 'w8a9'; did you mean 'w8a8'"),
        ("stages: {quant: {search: grid}}", "(stages.quant): unknown search 'grid'"),
        ("stages: {quant: {images: 0}}", "(stages.quant): images must be a positive integer, got 0"),
        ("stages: {quant: {sequential: 1}}", "(stages.quant): sequential must be true or false"),
        ("stages: {quant: {config: {post_softmax: {quantizer: adalg, bits: 4}}}}", "did you mean 'adalog'"),
        ("stages: {quant: {config: {qk: {quantizer: log2, bits: 4}}}}", "non-negative values only"),
        ("stages: {validate: {max_abs_diff: -1}}", "(stages.validate): max_abs_diff must be a positive number"),
        ("stages: {export: [onnx]}", "stages.export must be a mapping of settings"),
        ("name: 3\nstages: {tokens: {}}", "name must be a string"),
        ("description: only", "needs 'stages'"),
        ("stages: {}", "needs 'stages'"),
        ("- tokens", "must be a mapping with a 'stages' key, got list"),
        ("stages:\n\ttokens: {}", "cannot read recipe bad.yaml: invalid YAML at line 2, column 1: found character"),
    ],
)
def test_validation_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert message.replace("bad.yaml", str(path)) in str(err.value)


def test_unknown_names_and_missing_files() -> None:
    with pytest.raises(UserError) as err:
        load_recipe("tome-r9")
    assert "unknown recipe 'tome-r9'; did you mean 'tome-r8'?" in str(err.value)
    assert all(name in str(err.value) for name in list_recipes())
    with pytest.raises(UserError, match="recipe file missing.yaml does not exist"):
        load_recipe("missing.yaml")


def test_for_target_drops_what_cannot_pay_there() -> None:
    full = load_recipe("full")
    cpu, dropped = full.for_target("cpu")
    assert list(cpu.stages) == ["tokens", "quant"] and list(dropped) == ["sparsity"]
    assert "no speed on a CPU" in dropped["sparsity"]
    assert full.for_target("gpu") == (full, {})
    assert load_recipe("cpu").for_target("cpu")[1] == {}  # nothing to drop
    with pytest.raises(UserError, match="unknown target 'tpu'"):
        full.for_target("tpu")
    only_sparsity = parse_recipe({"stages": {"sparsity": {"method": "magnitude"}}}, "test", "s")
    with pytest.raises(UserError, match="nothing left for target cpu"):
        only_sparsity.for_target("cpu")
