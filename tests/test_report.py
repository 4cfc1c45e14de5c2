"""The report.json contract, Markdown rendering and failure-safe output writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitslim.errors import UserError
from vitslim.files import atomic_write_text, staged_output_dir
from vitslim.report import render_markdown, write_report
from vitslim.report.schema import build_report, validate_report


def latency(runtime: str, batch: int, p50: float) -> dict:
    return {
        "runtime": runtime,
        "batch": batch,
        "threads": 2,
        "warmup": 1,
        "runs": 5,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 1.2,
        "mean_ms": p50,
        "images_per_s": batch * 1000 / p50,
    }


def sample_report() -> dict:
    variant = {
        "name": "fp32",
        "top1": 0.9,
        "top5": 0.99,
        "agreement": 1.0,
        "cosine": 1.0,
        "kl": 0.0,
        "size_bytes": 2_000_000,
        "latency": [latency("pytorch", 1, 10.0), latency("onnxruntime", 1, 5.0)],
        "onnx": {"file": "model_fp32.onnx", "opset": 18, "max_abs_diff": 1e-6, "top1_agreement": 1.0, "samples": 100},
    }
    return {
        "model": {"name": "demo", "source": "test", "parameters": 22_000_000, "input_size": [3, 224, 224]},
        "data": {"name": "fashion-mnist:test", "samples": 100, "labelled": True},
        "environment": {
            "cpu": "Test CPU",
            "logical_cores": 2,
            "os": "Linux",
            "python": "3.11",
            "packages": {"torch": "2.14.1"},
            "cuda": None,
        },
        "variants": [variant],
    }


def test_contract_rejects_missing_parts() -> None:
    validate_report(sample_report())
    bad = sample_report()
    bad["variants"][0]["name"] = "quantized"
    with pytest.raises(ValueError, match="named 'fp32'"):
        validate_report(bad)
    bad = sample_report()
    del bad["variants"][0]["latency"][0]["p90_ms"]
    with pytest.raises(ValueError, match="latency.p90_ms"):
        validate_report(bad)
    bad = sample_report()
    del bad["data"]
    with pytest.raises(ValueError, match="data"):
        validate_report(bad)


def test_markdown_names_runtime_device_batch_threads_data() -> None:
    text = render_markdown(sample_report())
    assert "fashion-mnist:test, 100 samples" in text
    assert "Test CPU" in text and "torch 2.14.1" in text
    assert "| fp32 | pytorch | cpu | 1 | 2 | 10.00 |" in text
    assert "| fp32 | onnxruntime | cpu | 1 | 2 | 5.00 |" in text
    assert "90.00%" in text and "`model_fp32.onnx`" in text


def test_markdown_shows_tokens_and_flops_when_every_variant_has_them() -> None:
    report = sample_report()
    assert "block GFLOPs" not in render_markdown(report)
    reduced = {
        **report["variants"][0],
        "name": "tokens",
        "tokens_per_layer": [257, 249, 241],
        "block_flops_per_image": 3.2e9,
    }
    report["variants"][0].update(tokens_per_layer=[257, 257, 257], block_flops_per_image=4.6e9)
    report["variants"].append(reduced)
    text = render_markdown(report)
    assert "| tokens after last block | block GFLOPs / image |" in text
    assert "| 241 | 3.20 |" in text and "| 257 | 4.60 |" in text


def test_write_report(tmp_path: Path) -> None:
    json_path, md_path, html_path = write_report(tmp_path, sample_report())
    assert json.loads(json_path.read_text())["variants"][0]["name"] == "fp32"
    assert md_path.read_text().startswith("# vitslim report: demo")
    assert html_path.read_text().startswith("<!DOCTYPE html>")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.txt", "old")

    with pytest.raises(TypeError):
        atomic_write_text(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_staged_output_dir_success_failure_and_refusal(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output_dir(out) as staging:
        (staging / "report.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (out / "report.json").exists()

    with pytest.raises(UserError, match="already exists and is not empty"):
        with staged_output_dir(out):
            pass

    with pytest.raises(KeyboardInterrupt):
        with staged_output_dir(out, overwrite=True) as staging:
            (staging / "half.onnx").write_text("partial")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and sorted(p.name for p in out.iterdir()) == [
        "report.json"
    ]

    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_output_dir_unwritable_parent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to --out"):
        with staged_output_dir(blocker / "run"):
            pass


@pytest.mark.parametrize(
    ("measured", "says"),
    [
        ([5], "Sensitivity of 5-bit weights run through the model; 3-bit, 8-bit estimated"),
        ([], "No width was run through the model"),
        (None, None),  # a report from before measured_bits: no claim either way
    ],
)
def test_markdown_says_which_sensitivity_widths_were_measured(measured: list[int] | None, says: str | None) -> None:
    report = sample_report()
    mixed = {
        "costs": {"avg_weight_bits": 5.5, "size_bytes": 1_000_000},
        "seconds": 3.0,
        "sensitivity": {"blocks.0.mlp.fc1": {"3": 0.1, "5": 0.01, "8": 0.001}},
        "metric": "kl of the model output vs fp32",
        "calibration": "8 calibration images",
        "sensitivity_cache": "miss",
        **({} if measured is None else {"measured_bits": measured}),
    }
    sites = {"blocks.0.mlp.fc1.weight": {"kind": "weight", "bits": 5}}
    report["variants"].append(
        {**report["variants"][0], "name": "quant", "quantization": {"sites": sites}, "mixed_precision": mixed}
    )
    text = render_markdown(report)
    assert "quant: mixed precision reached 5.50 average weight bits" in text
    assert (says in text) if says else ("run through the model" not in text)


def test_markdown_shows_the_sparsity_family_section() -> None:
    report = sample_report()
    assert "## 2:4 sparsity" not in render_markdown(report)
    check = {"method": "wanda", "layers": 2, "pattern_in_model": 2, "pattern_in_onnx": 2, "onnx_layers_found": 2}
    fc1 = {"shape": [8, 4], "sparsity": 0.5, "relative_error": 0.01}
    per_layer = {"blocks.0.mlp.fc1": fc1, "blocks.0.mlp.fc2": {**fc1, "shape": [4, 8], "relative_error": 0.03}}
    report["variants"] += [
        {**report["variants"][0], "name": "sparsity", "sparsity": {**check, "per_layer": per_layer}},
        {**report["variants"][0], "name": "quant", "sparsity": check},  # carried along: no per-layer record
    ]
    text = render_markdown(report)
    assert text.index("## 2:4 sparsity") < text.index("## Latency")
    assert "| sparsity | wanda | 2 | 2 of 2 | 2 of 2 | 50.00% | 0.0200, worst blocks.0.mlp.fc2 0.0300 |" in text
    assert "| quant | wanda | 2 | 2 of 2 | 2 of 2 | n/a | n/a |" in text


def test_reports_open_with_a_summary() -> None:
    """Per variant, in ten seconds: top-1 change, speed-up, size, validation, what ran it."""
    report = sample_report()
    failed = {"passed": False, "reasons": ["top-1 agreement 90.00% < 99.00%"], "min_agreement": 0.99}
    report["variants"].append(
        {
            **report["variants"][0],
            "name": "quant",
            "top1": 0.88,
            "size_bytes": 500_000,
            "latency": [latency("pytorch", 1, 12.0), latency("onnxruntime", 1, 2.5)],
            "onnx": {**report["variants"][0]["onnx"], "format": "qdq", "validation": failed},
        }
    )
    lines = render_markdown(report).splitlines()
    assert lines[:3] == ["# vitslim report: demo", "", "## Summary"]
    assert "| fp32 | 90.00% | baseline | 2.0 MB | n/a | ONNX Runtime cpu, fp32 |" in lines
    quant = "| quant | 88.00% (-2.00 pt) | {} | 0.5 MB (0.25x) | FAILED (ONNX) | {} |"
    assert quant.format("2.00x (b1, not judged)", "ONNX Runtime cpu, int8 Q/DQ") in lines  # no rounds recorded
    report["variants"][1]["latency"] = report["variants"][1]["latency"][:1]  # timed in PyTorch only
    assert quant.format("0.83x (b1, not judged)", "PyTorch cpu, fake-quantized") in render_markdown(report).splitlines()


def test_build_report_checks_the_contract() -> None:
    parts = {k: v for k, v in sample_report().items() if k != "variants"}
    variant = sample_report()["variants"][0]
    report = build_report(**parts, benchmark={}, variants=[variant], command="vitslim test", notes=[])
    assert list(report)[:3] == ["vitslim_version", "created", "command"] and report["notes"] == []
    assert "tensorrt" not in report and "recipe" not in report
    with pytest.raises(ValueError, match="named 'fp32'"):
        build_report(**parts, benchmark={}, variants=[{**variant, "name": "quant"}])
