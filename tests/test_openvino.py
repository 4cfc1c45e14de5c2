"""OpenVINO as a deployment runtime: IR export, parity with PyTorch, what runs in int8, latency."""

from __future__ import annotations

import builtins
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import for_this_cpu, images, tiny_vit
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.errors import UserError
from vitslim.evaluate.environment import cpu_flags
from vitslim.evaluate.openvino_runtime import (
    execution_precision,
    int8_layers,
    ov_compile,
    ov_runner,
    require_openvino,
)
from vitslim.export.onnx_export import export_onnx
from vitslim.export.openvino_ir import ir_files, save_openvino_ir
from vitslim.export.qdq import export_quantized_onnx
from vitslim.runtimes import Deployed, resolve_runtimes
from vitslim.runtimes.timing import time_variants

pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install 'vitslim[openvino]')")

INPUT = (3, 32, 32)
DEPTH = 2


def _quantized(tokens: bool = False) -> torch.nn.Module:
    model = tiny_vit("vit", depth=DEPTH)
    if tokens:
        apply_token_reduction(model, TokenMergeConfig(r=2))
    quantize_(model, for_this_cpu(QuantConfig.preset("w8a8-cpu")), [images(8)], search="minmax", progress=False)
    return model


def _ir(model: torch.nn.Module, folder: Path, name: str) -> Path:
    if any(m.__class__.__name__ == "QuantPoint" for m in model.modules()):
        onnx_path = export_quantized_onnx(model, folder / f"{name}.onnx", INPUT).path
    else:
        onnx_path = export_onnx(model, folder / f"{name}.onnx", INPUT)
    return save_openvino_ir(onnx_path, folder / f"{name}.xml")


@pytest.mark.parametrize("tokens", [False, True])
def test_fp32_ir_matches_pytorch_and_runs_nothing_in_int8(tmp_path: Path, tokens: bool) -> None:
    model = tiny_vit("vit", depth=DEPTH)
    if tokens:
        apply_token_reduction(model, TokenMergeConfig(r=2))
    xml = _ir(model, tmp_path, "fp32")
    assert all(path.is_file() for path in ir_files(xml))
    x = images(6, seed=3)
    with torch.no_grad():
        ref = model(x)
    out = ov_runner(xml, threads=1, precision="f32")(x)
    assert (out - ref).abs().max() < 1e-4
    info = int8_layers(ov_compile(xml, 1, "f32", batch=1))
    assert info["float_precision"] == "f32" and info["int8_layers"] == 0
    assert info["layers"]["FullyConnected"] == {"f32": 4 * DEPTH + 1}


def test_w8a8_cpu_runs_every_linear_and_each_attention_block_in_int8(tmp_path: Path) -> None:
    model = _quantized()
    xml = _ir(model, tmp_path, "quant")
    x = images(16, seed=4)
    with torch.no_grad():
        ref = model(x)
    out = ov_runner(xml, threads=1, precision="f32")(x)
    # an ulp of float difference may move a value across one quantization step
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9 and (out - ref).abs().mean() < 0.05
    info = int8_layers(ov_compile(xml, 1, batch=1))
    layers = info["layers"]
    assert layers["FullyConnected"] == {"int8": 4 * DEPTH + 1}  # qkv, proj, fc1, fc2 per block, the head
    # q·kᵀ of each block in int8: inside OpenVINO's fused attention, or as an int8 MatMul
    fused, matmul = layers.get("Attention", {}).get("int8", 0), layers.get("MatMul", {}).get("int8", 0)
    assert fused + matmul == DEPTH, layers
    expected = attention_fusion(cpu_flags())
    if expected is not None:  # the CPUs it was observed on
        assert (fused, matmul) == ((DEPTH, 0) if expected else (0, DEPTH)), (cpu_flags(), layers)
    assert info["float_precision"] == execution_precision(ov_compile(xml, 1, batch=1))


def attention_fusion(flags: list[str]) -> bool | None:
    """Whether OpenVINO fuses an int8 attention block on a CPU with ``flags``, where observed: yes
    with AVX-512 VNNI (Sapphire Rapids, Zen 4), no on AVX2 alone (Zen 1; also under
    ``qemu-x86_64 -cpu EPYC``); None (not asserted) on the ISAs no run has been seen on."""
    if "avx512f" in flags:
        return True if "avx512_vnni" in flags else None
    return False if "avx2" in flags and "avx_vnni" not in flags else None


def test_attention_fusion_expectations_cover_each_isa() -> None:
    assert attention_fusion(["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]) is True
    assert attention_fusion(["avx2"]) is False
    assert attention_fusion(["avx2", "avx512f"]) is None and attention_fusion(["avx2", "avx_vnni"]) is None


def test_token_merged_quantized_ir_matches_pytorch(tmp_path: Path) -> None:
    model = _quantized(tokens=True)
    xml = _ir(model, tmp_path, "tome")
    x = images(16, seed=5)
    with torch.no_grad():
        ref = model(x)
    out = ov_runner(xml, threads=1, precision="f32")(x)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert int8_layers(ov_compile(xml, 1, batch=2))["layers"]["FullyConnected"] == {"int8": 4 * DEPTH + 1}


def test_ir_runs_any_batch_and_times_static_batches(tmp_path: Path) -> None:
    xml = _ir(tiny_vit("vit", depth=DEPTH), tmp_path, "fp32")
    run = ov_runner(xml, threads=1)
    assert run(images(1)).shape == (1, 10) and run(images(3)).shape == (3, 10)
    deployed = Deployed("fp32", None, xml.with_suffix(".onnx"), INPUT, torch.device("cpu"), artifacts={"openvino": xml})
    (entries,) = time_variants([deployed], ["openvino"], [1, 2], 1, warmup=0, runs=2).values()
    assert [(e.runtime, e.batch, e.threads) for e in entries] == [("openvino", 1, 1), ("openvino", 2, 1)]
    assert all(e.device in ("CPU (bf16)", "CPU (f32)") and e.p50_ms > 0 for e in entries)
    (baseline,) = time_variants([replace(deployed, baseline=True)], ["openvino"], [1], 1, warmup=0, runs=2).values()
    assert baseline[-1].device == "CPU (f32)"  # the baseline is also timed with the f32 hint (unless f32 already)


def test_bad_input_is_a_user_error_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(UserError, match="OpenVINO cannot convert bad.onnx"):
        save_openvino_ir(bad, tmp_path / "out" / "bad.xml")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(UserError, match="unknown OpenVINO precision"):
        ov_compile(bad, precision="int4")


def test_missing_openvino_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_openvino(name: str, *args, **kwargs):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(UserError, match=r"vitslim\[openvino\]"):
        require_openvino()
    with pytest.raises(UserError, match=r"vitslim\[openvino\]"):
        resolve_runtimes("openvino")


def test_all_runtimes_means_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    assert resolve_runtimes("all") == ("pytorch", "onnxruntime", "openvino")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert resolve_runtimes("all") == ("pytorch", "onnxruntime")
    with pytest.raises(UserError, match="unknown runtime"):
        resolve_runtimes("tvm")


def test_ir_outputs_are_deterministic(tmp_path: Path) -> None:
    """Two runs of the same IR on the same inputs give the same logits (no state between calls)."""
    xml = _ir(copy.deepcopy(_quantized()), tmp_path, "quant")
    run = ov_runner(xml, threads=1)
    x = images(4, seed=9)
    np.testing.assert_array_equal(run(x).numpy(), run(x).numpy())
