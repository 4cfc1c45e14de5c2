"""The command line on tiny random ViTs, including every bad-input case."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch

from tests.helpers import TINY, assert_user_error, run_cli, tiny_vit


def test_help_does_not_load_torch() -> None:
    """``vitslim --help`` answers without importing torch and timm (14 s on the 2-core VM)."""
    code = (
        "import sys; from click.testing import CliRunner; from vitslim.cli import cli; "
        "result = CliRunner().invoke(cli, ['--help']); assert result.exit_code == 0 and 'compress' in result.output; "
        "print(sorted(m for m in ('torch', 'timm', 'onnx') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_info_json(tmp_path: Path) -> None:
    result = run_cli("info", *TINY, "--num-classes", "2", "--json", str(tmp_path / "info.json"))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["depth"] == 2 and info["tokens"] == 17 and info["num_classes"] == 2 and info["flops_per_image"] > 0
    assert "flops_per_image" in result.output


def test_eval_image_folder_and_onnx(tmp_path: Path, image_folder: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", *TINY, "--num-classes", "2", "--out", str(onnx_path)).exit_code == 0
    result = run_cli(
        "eval",
        *TINY,
        "--num-classes",
        "2",
        "--data",
        str(image_folder),
        "--onnx",
        str(onnx_path),
        "--json",
        str(tmp_path / "eval.json"),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["data"]["samples"] == 6 and report["data"]["labelled"]
    torch_row, onnx_row = report["results"]
    assert 0.0 <= torch_row["top1"] <= 1.0 and onnx_row["agreement"] == 1.0 and onnx_row["cosine"] > 0.9999


def test_eval_onnx_in_openvino(tmp_path: Path, image_folder: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", *TINY, "--num-classes", "2", "--out", str(onnx_path)).exit_code == 0
    args = ["eval", *TINY, "--num-classes", "2", "--data", str(image_folder), "--onnx", str(onnx_path)]
    result = run_cli(*args, "--runtime", "openvino", "--json", str(tmp_path / "eval.json"))
    assert result.exit_code == 0, result.output
    _, ov_row = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert ov_row["name"] in ("openvino:m.onnx (bf16)", "openvino:m.onnx (f32)")
    assert ov_row["agreement"] == 1.0 and ov_row["cosine"] > 0.999  # bf16 where the CPU has it


def test_eval_unlabelled_folder_reports_no_accuracy(tmp_path: Path, image_folder: Path) -> None:
    result = run_cli(
        "eval", *TINY, "--num-classes", "2", "--data", str(image_folder / "cat"), "--json", str(tmp_path / "e.json")
    )
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert row["top1"] is None and row["top5"] is None and row["agreement"] == 1.0


def test_bench_json(tmp_path: Path) -> None:
    result = run_cli(
        "bench",
        *TINY,
        "--batch-sizes",
        "1,2",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--runs",
        "2",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["latency"]
    assert [(r["runtime"], r["batch"], r["threads"]) for r in rows[:6]] == [
        ("pytorch", 1, 1),
        ("pytorch", 2, 1),
        ("onnxruntime", 1, 1),
        ("onnxruntime", 2, 1),
        ("openvino", 1, 1),
        ("openvino", 2, 1),
    ]
    # OpenVINO in its default precision, then (where that is bf16) the f32 baseline
    default = rows[4]["device"]
    assert default in ("CPU (bf16)", "CPU (f32)")
    expected = [default, default] + (["CPU (f32)", "CPU (f32)"] if default == "CPU (bf16)" else [])
    assert [r["device"] for r in rows[4:]] == expected


def test_export_with_checkpoint(tmp_path: Path) -> None:
    model = tiny_vit(num_classes=3)
    ckpt = tmp_path / "tiny.safetensors"
    safetensors.torch.save_file(model.state_dict(), ckpt)
    args = [a for a in TINY if a != "--random-init"]
    result = run_cli(
        "export",
        *args,
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "t.onnx"),
        "--json",
        str(tmp_path / "x.json"),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "x.json").read_text())
    assert summary["top1_agreement"] == 1.0 and summary["max_abs_diff"] < 1e-4
    assert summary["validation"]["passed"] and summary["path"] == str(tmp_path / "t.onnx")


def test_export_validates_as_compress_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file ONNX Runtime disagrees with is judged by the validate stage's rule: renamed, exit 4."""
    from vitslim.export import validate

    real = validate.check_parity
    monkeypatch.setattr(validate, "check_parity", lambda *a, **k: replace(real(*a, **k), top1_agreement=0.0))
    result = run_cli("export", *TINY, "--out", str(tmp_path / "t.onnx"), "--json", str(tmp_path / "x.json"))
    assert result.exit_code == 4, result.output
    summary = json.loads((tmp_path / "x.json").read_text())
    assert not summary["validation"]["passed"] and "agreement" in summary["validation"]["reasons"][0]
    assert (tmp_path / "t.failed.onnx").is_file() and not (tmp_path / "t.onnx").exists()
    assert "failed validation against PyTorch" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--model", "deit_smal_patch16_224", "--random-init"], "did you mean deit_small_patch16_224"),
        (["info", *TINY, "--checkpoint", "/nonexistent/ckpt.pth"], "does not exist"),
        (["info", *TINY, "--model-arg", "novalue"], "expected KEY=VALUE"),
        (["bench", *TINY, "--batch-sizes", "1,x"], "comma-separated integers"),
        (["export", *TINY, "--out", "model.txt"], "must end in .onnx"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    assert_user_error(run_cli(*args), message)


def test_corrupt_and_mismatched_checkpoints(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    assert_user_error(run_cli("info", *TINY, "--checkpoint", str(corrupt)), "cannot read checkpoint")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(tiny_vit(depth=3).state_dict(), other)
    assert_user_error(run_cli("info", *TINY, "--checkpoint", str(other)), "unexpected keys")


def test_bad_data_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("eval", *TINY, "--data", str(empty)), str(empty))
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("no images here")
    assert_user_error(run_cli("eval", *TINY, "--data", str(texts)), "no images")
    assert_user_error(run_cli("eval", *TINY), "--data is required")


def test_unwritable_outputs_leave_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run_cli("export", *TINY, "--out", str(blocker / "m.onnx")), "cannot write")
    assert_user_error(run_cli("info", *TINY, "--json", str(blocker / "info.json")), "cannot write")
    assert_user_error(run_cli("demo", "--out", str(blocker / "run")), "cannot write to --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_demo_refuses_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    assert_user_error(run_cli("demo", "--out", str(tmp_path)), "already exists and is not empty")
    assert (tmp_path / "keep.txt").read_text() == "user data"
