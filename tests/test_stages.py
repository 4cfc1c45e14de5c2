"""The stage table: a stage added through the table alone runs in a recipe; chains and targets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pytest
import torch

from tests.helpers import FAST, run_cli, tiny, write_class_folder
from vitslim import stages
from vitslim.config import check_keys
from vitslim.errors import UserError
from vitslim.recipes import parse_recipe
from vitslim.report.schema import Variant
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


class HeadShiftEntries(TypedDict, total=False):
    head_shift: dict[str, Any]


def head_shift_section(variants: list[dict]) -> list[str]:
    shifted = [v for v in variants if "head_shift" in v]
    lines = [f"- {v['name']}: {v['head_shift']['layer']} bias shifted" for v in shifted]
    return ["", "## Head shift", "", *lines] if shifted else []


#: the report.html embeds whatever bytes a figure hook returns
TOY_PNG = b"\x89PNG\r\n\x1a\ntoy"

TOY = Family(
    from_dict=HeadShift.from_dict,
    apply=shift_head,
    summarize=lambda record, model, onnx_path, own: {"head_shift": {**record.report, "own": own}},
    notes=lambda variants: [f"{v['name']}: head shifted" for v in variants if "head_shift" in v],
    entries=HeadShiftEntries,
    sections=head_shift_section,
    figures=lambda report: [("Toy figure: the head shift of every variant.", TOY_PNG)],
)
#: first in the pipeline, weights only, followed by token merging; pointless on a GPU
TOY_SPEC = StageSpec(
    "head_shift", 5, f"{__name__}:TOY", weight_only=True, may_follow=("tokens",), cannot_pay={"gpu": "a toy"}
)


@pytest.fixture
def toy_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", STAGES.with_stage(TOY_SPEC))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The out folder of a compress run of a recipe with the toy stage and token merging (the toy table
    stays in place for the module's tests)."""
    root = tmp_path_factory.mktemp("toy")
    recipe = root / "toy.yaml"
    recipe.write_text("stages:\n  tokens: {r: 4}\n  head_shift: {shift: 2.0}\n")
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "STAGES", STAGES.with_stage(TOY_SPEC))
        args = ["--recipe", str(recipe), "--data", str(write_class_folder(root / "images")), *FAST]
        result = run_cli("compress", *tiny(), *args, "--runtime", "onnxruntime", "--out", str(out))
        assert result.exit_code == 0, result.output
        yield out


def test_a_stage_added_through_the_table_runs_in_a_recipe(toy_run: Path) -> None:
    report = json.loads((toy_run / "report.json").read_text())
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
    declared = set(Variant.__required_keys__ | Variant.__optional_keys__)
    for spec in stages.STAGES:
        entries = spec.load().entries
        declared |= set() if entries is None else entries.__required_keys__ | entries.__optional_keys__
    assert set().union(*report["variants"]) <= declared  # every variant key is the schema's or a family's


def test_a_stage_family_renders_its_own_section_and_figure(toy_run: Path) -> None:
    text = (toy_run / "report.md").read_text()
    assert "## Head shift\n\n- head_shift: head bias shifted\n- tokens: head bias shifted\n" in text
    assert text.index("## ONNX export parity") < text.index("## Head shift") < text.index("## Latency")
    page = (toy_run / "report.html").read_text()
    toy, tokens = "Toy figure: the head shift of every variant.", "Tokens each transformer block sees."
    assert page.index("Accuracy against ONNX Runtime latency") < page.index(toy) < page.index(tokens)  # table order
    result = run_cli("report", str(toy_run))  # re-rendered from report.json alone
    assert result.exit_code == 0, result.output
    assert (toy_run / "report.md").read_text() == text and (toy_run / "report.html").read_text() == page


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
