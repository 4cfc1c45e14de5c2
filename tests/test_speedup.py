"""Latency that cannot lie: speed-ups are judged round by round against their own noise, and a
variant whose graph is fp32's never gets one, on a loaded machine too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli, tiny
from vitslim.evaluate.speedup import MIN_ROUNDS, agreeing_rounds_needed, speedup


def entry(rounds: list[float]) -> dict:
    return {"p50_ms": float(np.median(rounds)), "round_p50_ms": rounds}


def drifting(seed: int, factor: float = 1.0, rounds: int = 8) -> tuple[list[float], list[float]]:
    """Per-round p50s of a baseline and a variant ``factor`` times as slow, on a machine whose speed
    drifts 3x over the run and jitters 20% per round."""
    rng = np.random.default_rng(seed)
    drift = np.linspace(10, 30, rounds)
    base = drift * rng.uniform(0.8, 1.2, rounds)
    return list(base), list(drift * factor * rng.uniform(0.8, 1.2, rounds))


@pytest.mark.parametrize("seed", range(20))
def test_equal_runners_on_a_drifting_machine_are_within_noise(seed: int) -> None:
    base, same = drifting(seed)
    judged = speedup(entry(base), entry(same))
    assert judged.verdict == "within noise" and not judged.claimed, judged
    assert judged.low < 1 < judged.high


@pytest.mark.parametrize(("factor", "verdict"), [(0.5, "faster"), (2.0, "slower")])
def test_a_real_change_is_judged_with_its_range(factor: float, verdict: str) -> None:
    base, variant = drifting(0, factor)
    judged = speedup(entry(base), entry(variant))
    assert judged.verdict == verdict and judged.claimed
    assert judged.low <= judged.ratio <= judged.high
    assert judged.text(1) == f"{judged.ratio:.2f}x (b1{'' if verdict == 'faster' else ', slower'})"


def test_more_rounds_never_make_a_claim_harder() -> None:
    """The sign test: 5 of 5, 9 of 10, 12 of 15 rounds; one round of ten against still makes a claim."""
    assert [agreeing_rounds_needed(n) for n in (5, 8, 10, 15, 30)] == [5, 8, 9, 12, 21]
    base = [10.0] * 10
    one_against = [5.0] * 9 + [11.0]
    assert speedup(entry(base), entry(one_against)).verdict == "faster"
    assert speedup(entry(base), entry([5.0] * 8 + [11.0] * 2)).verdict == "within noise"


def test_too_few_rounds_the_same_graph_and_old_reports_are_never_claimed() -> None:
    base, fast = drifting(0, 0.5, rounds=MIN_ROUNDS - 1)
    assert speedup(entry(base), entry(fast)).verdict == "not judged"
    base, fast = drifting(0, 0.5)
    assert speedup(entry(base), entry(fast), same_graph=True).verdict == "same graph"
    assert speedup({"p50_ms": 20.0}, {"p50_ms": 10.0}).text(1) == "2.00x (b1, not judged)"
    assert "fewer than 5 rounds: not judged" in speedup(entry(base[:2]), entry(fast[:2])).text(1)
    assert "within noise: 0.90-1.10x" in speedup(entry([10, 11, 9, 10, 10]), entry([10, 10, 10, 10, 10])).text(1)


def test_a_weight_only_variant_gets_no_speed_up_on_a_loaded_machine(tmp_path: Path, image_folder: Path) -> None:
    """2:4 sparsity alone keeps fp32's graph: timed while two processes keep both cores busy, its
    summary says "same graph as fp32" whatever the timings, and so does the latency table."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  sparsity: {method: magnitude, include: ['blocks.*.mlp.fc2']}\n")
    out = tmp_path / "out"
    timing = ["--runs", "15", "--warmup", "1", "--batch-sizes", "1,2", "--threads", "1", "--runtime", "onnxruntime"]
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        result = run_cli(
            "compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), *timing, "--out", str(out)
        )
    finally:
        for process in load:
            process.kill()
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    fp32, sparse = report["variants"]
    assert sparse["onnx"]["graph_sha256"] == fp32["onnx"]["graph_sha256"]
    assert all(len(e["round_p50_ms"]) >= MIN_ROUNDS for v in (fp32, sparse) for e in v["latency"])
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| sparsity |"))
    assert row.count("same graph as fp32: noise") == 2, row
    assert "Warning" not in (out / "report.md").read_text() and "warning" not in result.stderr
