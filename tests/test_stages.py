"""The stage table: a stage added through the table alone runs in a recipe; chains and targets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_cli import run
from tests.test_compress import FAST, tiny
from vitslim import stages
from vitslim.config import check_keys
from vitslim.errors import UserError
from vitslim.recipes import parse_recipe
from vitslim.stages import STAGES, Family, StageRecord, StageSpec


@dataclass(frozen=True)
class HeadShift:
    """A toy stage: add ``shift`` to the classifier's bias (weights only)."""

    shift: float = 0.5

    def describe(self) -> str:
        return f"head bias + {self.shift:g}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadShift:
        return cls(**check_keys(data, ["shift"]))


def shift_head(model: torch.nn.Module, config: HeadShift, calibration: Any) -> StageRecord:
    with torch.no_grad():
        model.head.bias.add_(config.shift)
    return StageRecord(config.describe(), config, {"layer": "head", "seed": calibration.seed})


TOY = Family(
    from_dict=HeadShift.from_dict,
    apply=shift_head,
    summarize=lambda record, model, onnx_path, own: {"head_shift": {**record.report, "own": own}},
    notes=lambda variants: [f"{v['name']}: head shifted" for v in variants if "head_shift" in v],
)
#: first in the pipeline, weights only, followed by token merging; pointless on a GPU
TOY_SPEC = StageSpec(
    "head_shift", 5, f"{__name__}:TOY", weight_only=True, may_follow=("tokens",), cannot_pay={"gpu": "a toy"}
)


@pytest.fixture
def toy_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", STAGES.with_stage(TOY_SPEC))


def test_a_stage_added_through_the_table_runs_in_a_recipe(toy_table, tmp_path: Path, image_folder: Path) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("stages:\n  tokens: {r: 4}\n  head_shift: {shift: 2.0}\n")
    out = tmp_path / "out"
    result = run(
        "compress",
        *tiny(),
        "--recipe",
        str(recipe),
        "--data",
        str(image_folder),
        *FAST,
        "--runtime",
        "onnxruntime",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["recipe"]["stages"]) == ["head_shift", "tokens"]  # the table's order, not the file's
    fp32, shifted, merged = report["variants"]
    assert (shifted["name"], shifted["description"], merged["name"]) == ("head_shift", "head bias + 2", "tokens")
    assert shifted["head_shift"] == {"layer": "head", "seed": 0, "own": True}
    assert merged["head_shift"]["own"] is False  # applied before, carried along
    assert shifted["onnx"]["graph_of"] == "fp32"  # weights only: fp32's traced graph with the shifted bias
    assert shifted["onnx"]["validation"]["passed"] and merged["onnx"]["validation"]["passed"]
    assert shifted["agreement"] == 1.0  # the same shift on every logit keeps every argmax
    assert "head_shift: head shifted" in report["notes"] and "tokens: head shifted" in report["notes"]
    assert merged["tokens_per_layer"][-1] < fp32["tokens_per_layer"][-1]


def test_the_table_orders_chains_and_targets(toy_table) -> None:
    table = stages.STAGES
    assert table.names == ("head_shift", "tokens", "sparsity", "quant", "export", "validate")
    assert [s.name for s in table if s.model_stage] == ["head_shift", "tokens", "sparsity", "quant"]
    with pytest.raises(UserError, match=r"recipe inline: stage 'sparsity' cannot follow 'head_shift'"):
        parse_recipe({"stages": {"head_shift": {}, "sparsity": {"method": "magnitude"}}}, "inline", "inline")
    recipe = parse_recipe({"stages": {"head_shift": {}, "tokens": {"r": 2}}}, "inline", "inline")
    gpu, dropped = recipe.for_target("gpu")
    assert list(gpu.stages) == ["tokens"] and dropped == {"head_shift": "a toy"}
    assert recipe.for_target("cpu") == (recipe, {})
    with pytest.raises(UserError, match="did you mean 'shift'"):
        parse_recipe({"stages": {"head_shift": {"shfit": 1}}}, "inline", "inline")


def test_unknown_stage_names_in_the_table_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown stages"):
        STAGES.with_stage(dataclasses.replace(TOY_SPEC, may_follow=("nope",)))
