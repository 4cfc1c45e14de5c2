"""report.html with its figures, `vitslim report` (regenerate, compare) on a tiny compress run."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.helpers import FAST, assert_user_error, run_cli, tiny
from vitslim.compress.quant.report import bits_per_layer
from vitslim.compress.tokens.report import tokens_figure
from vitslim.report.figures import accuracy_vs_latency
from vitslim.report.html import render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tome_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    from tests.helpers import write_class_folder

    images = write_class_folder(root / "images")
    out = root / "out"
    result = run_cli("compress", *tiny(), "--recipe", "tome-r8", "--data", str(images), *FAST, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_html_has_tables_and_labelled_figures(tome_run: Path) -> None:
    page = (tome_run / "report.html").read_text()
    report = json.loads((tome_run / "report.json").read_text())
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "http" not in page.split("<body>")[0]
    pngs = embedded_pngs(page)
    assert len(pngs) == 2 and all(p.startswith(PNG_MAGIC) for p in pngs)  # accuracy/latency + tokens
    assert "Accuracy against ONNX Runtime latency" in page and "Tokens each transformer block sees" in page
    assert bits_per_layer(report) is None  # nothing quantized in a token recipe
    assert render_html(report) == page


def test_figures_are_skipped_without_data(tome_run: Path) -> None:
    report = json.loads((tome_run / "report.json").read_text())
    report["variants"] = report["variants"][:1]
    assert tokens_figure(report) is None  # one variant: nothing to compare
    assert accuracy_vs_latency(report, runtime="tensorrt") is None
    assert len(embedded_pngs(render_html(report))) == 1


def test_bits_figure_for_quantized_sites(tome_run: Path) -> None:
    report = json.loads((tome_run / "report.json").read_text())
    report["variants"][-1]["quantization"] = {
        "sites": {
            "blocks.0.attn.qkv.weight": {"kind": "weight", "quantizer": "uniform", "bits": 4},
            "blocks.0.attn.qkv.input": {"kind": "post_ln", "quantizer": "uniform", "bits": 8},
        }
    }
    assert bits_per_layer(report).startswith(PNG_MAGIC)


def test_report_command_regenerates_and_compares(tome_run: Path, tmp_path: Path) -> None:
    (tome_run / "report.html").unlink()
    (tome_run / "report.md").write_text("stale")
    result = run_cli("report", str(tome_run))
    assert result.exit_code == 0, result.output
    assert (tome_run / "report.html").is_file() and "# vitslim report" in (tome_run / "report.md").read_text()

    out = tmp_path / "compare.html"
    result = run_cli("report", str(tome_run), str(tome_run), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.count(f"| {tome_run} | tokens |") == 2 and "(1.00x)" in result.output
    assert "<table>" in out.read_text()


def test_report_command_errors(tome_run: Path, tmp_path: Path) -> None:
    assert_user_error(run_cli("report", str(tmp_path)), "has no report.json")
    (tmp_path / "report.json").write_text("{}")
    assert_user_error(run_cli("report", str(tmp_path)), "is not a vitslim report")
    assert_user_error(run_cli("report", str(tome_run), "--out", str(tmp_path / "x.md")), "--out is for comparing")
