"""The runtime registry: a runtime registered once is offered by --runtime, prepared, validated and
timed in a compress run and named in its report; a slower result is flagged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_user_error, run_cli, tiny
from vitslim.runtimes import ALL, RUNTIMES, Check, Deployed, Runtime, Timed, resolve_runtimes


class SleepyRuntime(Runtime):
    """A toy runtime: it "prepares" by counting the evaluation images and "runs" by sleeping, the
    uncompressed model 2 ms, every other variant 10 ms (a deployment made slower)."""

    name = "sleepy"
    title = "Sleepy"
    deploy_rank = 0  # the summary's runtime whenever it was timed

    def prepare(self, deployed: Deployed, check: Check) -> dict[str, Any]:
        return {"images": sum(len(images) for images, _ in check.batches), "baseline": deployed.baseline}

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        seconds = 0.002 if deployed.baseline else 0.010
        return {"": Timed(lambda: time.sleep(seconds), "pillow")}

    def ran_in(self, variant: dict[str, Any], device: str) -> str:
        return f"Sleepy on a {device}"


class MissingRuntime(SleepyRuntime):
    name = "missing"
    title = "Missing"
    optional = True
    install = "pip install missing"

    def available(self) -> bool:
        return False


@pytest.fixture
def sleepy() -> Any:
    with RUNTIMES.registered(SleepyRuntime.name, SleepyRuntime()) as runtime:
        yield runtime


def test_a_registered_runtime_runs_in_compress_and_its_report(sleepy, tmp_path: Path, image_folder: Path) -> None:
    assert "sleepy" in run_cli("compress", "--help").output and "sleepy" in run_cli("bench", "--help").output
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  tokens: {r: 8}\n")
    out = tmp_path / "out"
    timing = ["--runs", "15", "--warmup", "0", "--batch-sizes", "1", "--threads", "1"]  # 5 rounds of 3 calls
    args = ["compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), *timing]
    result = run_cli(*args, "--runtime", "sleepy", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    fp32, tokens = report["variants"]
    assert fp32["sleepy"] == {"images": 6, "baseline": True} and tokens["sleepy"] == {"images": 6, "baseline": False}
    for variant in (fp32, tokens):
        (entry,) = variant["latency"]
        assert (entry["runtime"], entry["device"], entry["runs"], len(entry["round_p50_ms"])) == (
            "sleepy",
            "pillow",
            15,
            5,
        )
    assert tokens["latency"][0]["p50_ms"] > 2 * fp32["latency"][0]["p50_ms"]
    summary = (out / "report.md").read_text().split("## Summary")[1]
    assert "speed-ups in Sleepy" in summary and "Sleepy on a pillow" in summary
    assert "(b1, slower)" in summary and "**Warning**: tokens is slower than fp32 in Sleepy at batch 1" in summary
    assert "warning: tokens is slower than fp32 in Sleepy at batch 1" in result.stderr


def test_a_missing_runtime_is_named_with_its_install_hint_and_left_out_of_all(
    sleepy, tmp_path: Path, image_folder: Path
) -> None:
    with RUNTIMES.registered(MissingRuntime.name, MissingRuntime()):
        assert "missing" not in resolve_runtimes(ALL) and "sleepy" in resolve_runtimes(ALL)
        result = run_cli(
            "compress", *tiny(), "--recipe", "tome-r8", "--runtime", "missing", "--out", str(tmp_path / "o")
        )
        assert_user_error(result, "Missing is not installed: pip install missing")
    assert not (tmp_path / "o").exists()
    assert_user_error(run_cli("eval", *tiny(), "--runtime", "pytorch", "--onnx", __file__), "'pytorch' is not one of")
