"""``--recipe auto``: the probe decides which recipes are candidates, the sweep times them side by
side, the fastest within --max-drop is compressed and its recipe saved beside the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_user_error, run_cli, tiny
from vitslim.pipeline import auto
from vitslim.recipes import load_recipe
from vitslim.runtimes import RUNTIMES, Deployed, Runtime, Timed


class Metronome(Runtime):
    """A toy runtime whose int8 files run fastest: Q/DQ 1 ms, token-merged 3 ms, the rest 5 ms; the
    probe's files as ``int8`` says: 5 ms float, int8 Linears 3 ms and int8 q·kᵀ 1 ms (``attention``) or 3 ms."""

    name = "metronome"
    title = "Metronome"

    def __init__(self, int8: bool, attention: bool = True) -> None:
        self.int8, self.attention = int8, attention

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        probed = {"fp32": 0.005, "int8-linear": 0.003, "int8-attention": 0.001 if self.attention else 0.003}
        if deployed.name in probed:
            seconds = probed[deployed.name] if self.int8 else 0.005
        else:
            seconds = {"model_quant": 0.001, "model_tokens": 0.003}.get(deployed.name, 0.005)
        return {"": Timed(lambda: time.sleep(seconds), "beat")}


@pytest.fixture
def two_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auto, "TOKEN_RECIPES", ("tome-r8",))
    monkeypatch.setattr(auto, "INT8_RECIPES", ("w8a8",))


def test_auto_compresses_the_fastest_candidate_the_probe_allows(
    two_candidates, tmp_path: Path, image_folder: Path
) -> None:
    chosen = "w8a8"  # the int8 file runs fastest, and the probe says int8 pays
    out = tmp_path / "out"
    timing = ["--runs", "5", "--warmup", "0", "--batch-sizes", "1", "--threads", "1", "--runtime", "metronome"]
    data = ["--data", str(image_folder), "--calib", str(image_folder)]
    with RUNTIMES.registered(Metronome.name, Metronome(int8=True)):
        result = run_cli(
            "compress", *tiny(), "--recipe", "auto", "--max-drop", "100", *data, *timing, "--out", str(out)
        )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "recipe.yaml").read_text()) == load_recipe(chosen).to_dict()
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["name"] == chosen
    decided, *lost = [n for n in report["notes"] if "auto" in n]
    assert "int8 Linears are faster, int8 q·kᵀ too" in decided and f"{chosen} is the fastest at batch 1" in decided
    assert [n.split(" (")[0] for n in lost] == ["auto: tome-r8 lost: slower at batch 1"]
    sweep = json.loads((out / "auto" / "sweep.json").read_text())
    assert sweep["summary"]["best"] == chosen and (out / "auto" / "sweep.md").is_file()
    assert not any(p.name.startswith(".out.auto") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("int8", "attention", "expected"),
    [
        (False, False, list(auto.TOKEN_RECIPES)),
        (True, False, [*auto.TOKEN_RECIPES, "cpu-linear-int8"]),
        (True, True, [*auto.TOKEN_RECIPES, *auto.INT8_RECIPES]),
    ],
)
def test_the_probe_picks_the_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, int8: bool, attention: bool, expected: list[str]
) -> None:
    """Int8 recipes only where int8 Linears pay; int8 attention matmuls only where int8 q·kᵀ pays too;
    a sweep with no winner within the bound is a user error."""
    import vitslim.sweep

    swept: list = []

    def no_winner(loaded, candidates, out, settings, **kwargs) -> dict:
        swept.extend(candidates)
        assert settings.runtime == "metronome" and settings.max_drop == 0.5
        return {"summary": {"best": None, "candidates": []}}

    monkeypatch.setattr(vitslim.sweep, "run_sweep", no_winner)
    args = ["--recipe", "auto", "--max-drop", "0.5", "--runtime", "metronome", "--batch-sizes", "1"]
    with RUNTIMES.registered(Metronome.name, Metronome(int8, attention)):
        result = run_cli("compress", *tiny(), *args, "--out", str(tmp_path / "o"))
    assert_user_error(result, f"no candidate ({', '.join(expected)}) stays within --max-drop 0.5")
    assert [c.name for c in swept] == expected and not (tmp_path / "o").exists()
    if "cpu-linear-int8" in expected:  # the cpu recipe with q and k float, everything else as the cpu recipe
        linear, cpu = swept[-1].recipe.to_dict(), load_recipe("cpu").to_dict()
        assert linear["stages"]["quant"]["config"]["qk"] is None
        assert linear["stages"]["tokens"] == cpu["stages"]["tokens"]


def test_auto_needs_a_bound_and_a_runtime_that_runs_files(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "o")]
    assert_user_error(run_cli("compress", *tiny(), "--recipe", "auto", *out), "--recipe auto needs --max-drop")
    assert_user_error(
        run_cli("compress", *tiny(), "--recipe", "tome-r8", "--max-drop", "1", *out), "--max-drop goes with"
    )
    result = run_cli("compress", *tiny(), "--recipe", "auto", "--max-drop", "1", "--runtime", "pytorch", *out)
    assert_user_error(result, "needs a runtime that runs exported files")
    assert not (tmp_path / "o").exists()
