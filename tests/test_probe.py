"""The machine probe: the model's first block in float, with int8 Linears and with int8 q·kᵀ, per
runtime, judged against its noise; the verdicts follow the timings; the CLI prints and writes them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import TINY, run_cli, tiny_vit
from vitslim.evaluate.runtimes import ort_runtime_ops, ort_session
from vitslim.runtimes import RUNTIMES, Deployed, Runtime, Timed
from vitslim.runtimes.probe import ProbeShape, first_block, int8_pays, probe, probe_files, probe_shape

SIZE = (3, 32, 32)


def test_the_shape_is_read_from_the_model() -> None:
    assert probe_shape(tiny_vit("vit"), SIZE) == ProbeShape(tokens=17, dim=64, hidden=256, heads=2)


def test_the_first_block_is_cut_from_a_copy() -> None:
    model = tiny_vit("vit")
    block = first_block(model)
    assert len(block.blocks) == 1 and len(model.blocks) == 2
    assert torch.equal(block.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert block.blocks[0].attn.qkv.weight.data_ptr() != model.blocks[0].attn.qkv.weight.data_ptr()


def test_probe_files_compute_the_first_block_and_run_integer_kernels(tmp_path: Path) -> None:
    model = tiny_vit("vit")
    paths = probe_files(model, SIZE, tmp_path)
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = first_block(model)(x).numpy()
    outputs, kernels = {}, {}
    for name, path in paths.items():
        session = ort_session(path, threads=1)
        outputs[name] = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        kernels[name] = ort_runtime_ops(path, 1).get("MatMulIntegerToFloat", 0)
    np.testing.assert_allclose(outputs["fp32"], expected, atol=1e-4)
    for name in ("int8-linear", "int8-attention"):
        assert np.corrcoef(expected.ravel(), outputs[name].ravel())[0, 1] > 0.98, name
    # what is timed is ONNX Runtime's integer kernels: the block's Linears, then q·kᵀ as well
    assert kernels["fp32"] == 0 < kernels["int8-linear"] < kernels["int8-attention"]


class Stopwatch(Runtime):
    """A toy runtime: the int8-Linear file takes 1 ms, the float one and the int8-attention one 6 ms."""

    name = "stopwatch"
    title = "Stopwatch"

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        seconds = 0.001 if deployed.name == "int8-linear" else 0.006
        return {"": Timed(lambda: time.sleep(seconds), "dial")}


@pytest.fixture
def stopwatch() -> Any:
    with RUNTIMES.registered(Stopwatch.name, Stopwatch()) as runtime:
        yield runtime


def test_the_verdicts_follow_the_timings(stopwatch) -> None:
    rows = probe(tiny_vit("vit"), SIZE, ["stopwatch"], batch_sizes=[1], threads=1, runs=15)
    assert [(r["layer"], r["precision"], r["verdict"]) for r in rows] == [
        ("linear", "int8", "faster"),
        ("attention", "int8", "slower"),
    ]
    assert int8_pays(rows, "stopwatch", "linear", 1) is True and int8_pays(rows, "stopwatch", "attention", 1) is False
    assert int8_pays(rows, "stopwatch", "linear", 16) is None
    linear = rows[0]
    assert linear["speedup"] > 3 and linear["round_range"][0] > 1 and linear["against"] == "dial"


def test_the_probe_command_prints_and_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    args = ["--runtime", "onnxruntime", "--batch-sizes", "1", "--threads", "1", "--runs", "5", "--json", str(out)]
    result = run_cli("probe", *TINY, *args)
    assert result.exit_code == 0, result.output
    probed = json.loads(out.read_text())
    assert probed["shape"] == {"tokens": 17, "dim": 64, "hidden": 256, "heads": 2}
    assert [(r["runtime"], r["layer"], r["precision"]) for r in probed["probe"]] == [
        ("onnxruntime", "linear", "int8"),
        ("onnxruntime", "attention", "int8"),
    ]
    assert all(r["p50_ms"] > 0 and r["verdict"] in ("faster", "slower", "within noise") for r in probed["probe"])
    assert "onnxruntime" in probed["environment"]["runtimes"] and "linear b1" in result.output
