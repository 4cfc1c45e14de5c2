"""Accuracy, fidelity and the latency harness."""

from __future__ import annotations

import time

import pytest
import torch

from tests.helpers import tiny_vit
from vitslim.evaluate.accuracy import Outputs, collect_outputs, fidelity, topk_accuracy, torch_runner
from vitslim.evaluate.environment import environment
from vitslim.evaluate.latency import time_calls
from vitslim.export.onnx_export import export_onnx
from vitslim.runtimes import Deployed
from vitslim.runtimes.timing import rounds_of, time_variants


def test_topk_accuracy_on_known_logits() -> None:
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    outputs = Outputs(logits, torch.tensor([0, 2, 2, 1]))
    assert topk_accuracy(outputs, 1) == pytest.approx(0.5)
    assert topk_accuracy(outputs, 2) == pytest.approx(1.0)
    assert topk_accuracy(outputs, 5) is None  # more than the 3 classes
    assert topk_accuracy(Outputs(logits, torch.full((4,), -1)), 1) is None  # unlabelled


def test_fidelity_identical_and_different() -> None:
    ref = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    same = fidelity(ref, ref.clone())
    assert same.agreement == 1.0 and same.cosine == pytest.approx(1.0) and same.kl == pytest.approx(0.0, abs=1e-12)
    flipped = fidelity(ref, -ref)
    assert flipped.agreement < 0.2 and flipped.cosine == pytest.approx(-1.0) and flipped.kl > 0.1
    features = fidelity(ref, ref * 2, classifier=False)
    assert features.agreement is None and features.kl is None and features.cosine == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        fidelity(ref, ref[:, :5])


def test_collect_outputs_keeps_order_and_labels() -> None:
    model = tiny_vit()
    batches = [(torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])), (torch.randn(2, 3, 32, 32), torch.tensor([4, 5]))]
    outputs = collect_outputs(torch_runner(model), batches, progress=False)
    assert outputs.logits.shape == (5, 10) and outputs.labels.tolist() == [1, 2, 3, 4, 5]
    with torch.no_grad():
        assert torch.equal(outputs.logits[3:], model(batches[1][0]))


def test_time_calls_measures_a_known_sleep() -> None:
    result = time_calls(lambda: time.sleep(0.01), "sleep", batch=4, threads=1, warmup=1, runs=6)
    assert result.runs == 6 and result.warmup == 1
    assert 9.0 <= result.p50_ms <= 60.0 and result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.images_per_s == pytest.approx(4000.0 / result.p50_ms)


def test_time_calls_stops_at_time_budget_but_keeps_minimum_runs() -> None:
    result = time_calls(lambda: time.sleep(0.002), "sleep", batch=1, threads=1, warmup=0, runs=1000, max_seconds=0.0)
    assert result.runs == 5


def test_time_variants_times_every_runtime_interleaved(tmp_path) -> None:
    model = tiny_vit()
    path = export_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    deployed = Deployed("tiny", model, path, (3, 32, 32), torch.device("cpu"), baseline=True)
    (results,) = time_variants([deployed], ["pytorch", "onnxruntime"], [1, 4], 1, warmup=1, runs=3).values()
    assert [(r.runtime, r.batch, r.threads, r.runs, len(r.round_p50_ms)) for r in results] == [
        ("pytorch", 1, 1, 3, 3),
        ("pytorch", 4, 1, 3, 3),
        ("onnxruntime", 1, 1, 3, 3),
        ("onnxruntime", 4, 1, 3, 3),
    ]
    assert all(r.p10_ms <= r.p50_ms <= r.p90_ms and r.device in ("cpu", "CPUExecutionProvider") for r in results)


@pytest.mark.parametrize(
    ("runs", "batch", "rounds", "calls"), [(30, 1, 10, 3), (15, 1, 5, 3), (5, 1, 5, 1), (30, 16, 30, 1), (2, 1, 2, 1)]
)
def test_rounds_leave_room_to_judge_a_speed_up(runs: int, batch: int, rounds: int, calls: int) -> None:
    assert rounds_of(runs, batch) == (rounds, calls)


def test_environment_names_machine_and_versions() -> None:
    env = environment()
    assert env["cpu"] and env["logical_cores"] >= 1
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
