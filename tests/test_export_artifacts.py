"""TensorRT command construction and the unavailable path, and manifest.json of an export."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest

from tests.helpers import TINY, images, meaningful_vit, uniform_cfg
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.errors import UserError
from vitslim.export.manifest import write_manifest
from vitslim.export.onnx_export import export_onnx
from vitslim.export.qdq import export_quantized_onnx
from vitslim.export.tensorrt import (
    TensorRTUnavailable,
    build_tensorrt_engine,
    engine_profile,
    tensorrt_unavailable_reason,
    trtexec_command,
)
from vitslim.export.validate import validate_onnx

INPUT = (3, 32, 32)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(meaningful_vit(), tmp_path_factory.mktemp("trt") / "model.onnx", INPUT)


def test_trtexec_flag_mapping(fp32_onnx: Path) -> None:
    cmd = trtexec_command(
        fp32_onnx,
        "model.engine",
        fp16=True,
        int8=True,
        sparse_weights=True,
        batch_sizes=(16, 1, 4),
        timing_cache="cache.bin",
    )
    assert cmd[:3] == ["trtexec", f"--onnx={fp32_onnx}", "--saveEngine=model.engine"]
    assert "--fp16" in cmd and "--int8" in cmd and "--fp8" not in cmd and "--sparsity=enable" in cmd
    # shapes and the input name come from the ONNX file; opt defaults to the largest batch
    assert "--minShapes=input:1x3x32x32" in cmd
    assert "--optShapes=input:16x3x32x32" in cmd
    assert "--maxShapes=input:16x3x32x32" in cmd
    assert cmd[-1] == "--timingCacheFile=cache.bin"
    plain = trtexec_command(fp32_onnx, "e.plan", fp8=True, opt_batch=2, batch_sizes=(1, 8), input_shape=(3, 64, 64))
    assert "--fp8" in plain and "--fp16" not in plain and "--sparsity=enable" not in plain
    assert "--optShapes=input:2x3x64x64" in plain and not any(a.startswith("--timingCache") for a in plain)


def test_engine_profile_rejects_bad_batches() -> None:
    with pytest.raises(UserError, match="positive"):
        engine_profile([0, 4], (3, 8, 8))
    with pytest.raises(UserError, match="outside"):
        engine_profile([1, 4], (3, 8, 8), opt_batch=8)
    profile = engine_profile([4], (3, 8, 8), input_name="pixels")
    assert profile.min_shape == profile.opt_shape == profile.max_shape == (4, 3, 8, 8)


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are available here")
def test_unavailable_tensorrt_writes_trtexec_script(fp32_onnx: Path) -> None:
    engine = fp32_onnx.with_suffix(".engine")
    with pytest.raises(TensorRTUnavailable, match="trtexec command") as info:
        build_tensorrt_engine(fp32_onnx, engine, fp16=True, batch_sizes=(1, 16), timing_cache="t.cache")
    assert info.value.exit_code == 3 and isinstance(info.value, UserError)
    script = fp32_onnx.with_name("model.trtexec.sh")
    assert info.value.script == script and script.stat().st_mode & 0o111
    line = [ln for ln in script.read_text().splitlines() if ln.startswith("trtexec")][0]
    args = shlex.split(line)
    assert args[-1] == "$@" and "--fp16" in args and "--maxShapes=input:16x3x32x32" in args
    assert f"--saveEngine={engine}" in args and "--timingCacheFile=t.cache" in args
    assert not engine.exists()


@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=f"{tensorrt_unavailable_reason()}")
def test_build_tensorrt_engine(fp32_onnx: Path, tmp_path: Path) -> None:
    engine = build_tensorrt_engine(
        fp32_onnx, tmp_path / "m.engine", fp16=True, batch_sizes=(1, 4), timing_cache=tmp_path / "cache.bin"
    )
    assert engine.stat().st_size > 0 and (tmp_path / "cache.bin").stat().st_size > 0


def test_manifest_lists_files_precision_and_versions(tmp_path: Path) -> None:
    model = quantize_(meaningful_vit(), QuantConfig.log(8, 8, softmax="log2", gelu=None), images(16), progress=False)
    result = export_quantized_onnx(model, tmp_path / "model.onnx", INPUT)
    check = validate_onnx(model, result.path, images(16, seed=1), threads=1)
    (tmp_path / "notes.txt").write_text("hello\n")
    recipe = {"name": "w8a8-log", "quantization": uniform_cfg(8, 8).to_dict()}
    path = write_manifest(
        tmp_path, [result.path, tmp_path / "notes.txt"], recipe=recipe, export=result, validation=check
    )
    data = json.loads(path.read_text())
    files = {f["path"]: f for f in data["files"]}
    assert files["model.onnx"]["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert files["notes.txt"]["size_bytes"] == 6
    assert data["recipe"]["name"] == "w8a8-log" and data["opset"] == result.opset
    precision = data["precision"]
    assert precision["blocks.0.attn.softmax"]["mode"] == "emulated"
    assert precision["blocks.0.attn.softmax"]["quantizer"] == "log2"
    assert precision["blocks.0.attn.qkv.weight"] == {
        **precision["blocks.0.attn.qkv.weight"],
        "mode": "accelerated",
        "bits": 8,
        "onnx_type": "int8",
        "axis": 1,
    }
    assert precision["blocks.0.mlp.fc1.input"]["onnx_type"] == "uint8"
    assert data["quantization"]["emulated_sites"] == 2 and data["validation"]["passed"]
    assert data["versions"]["onnxruntime"] and data["versions"]["torch"] and "tensorrt" in data["versions"]
    with pytest.raises(UserError, match="does not exist"):
        write_manifest(tmp_path, [tmp_path / "missing.onnx"])


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are available here")
def test_cli_export_tensorrt_exits_3_with_a_trtexec_script(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vitslim.cli import cli

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        cli,
        [
            "--quiet",
            "export",
            *TINY,
            "--out",
            str(out),
            "--format",
            "tensorrt",
            "--fp16",
            "--batch-sizes",
            "1,8",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 3, result.output
    assert "trtexec" in result.output and "Traceback" not in result.output
    script = tmp_path / "m.trtexec.sh"
    assert out.is_file() and script.is_file()
    assert "--fp16" in script.read_text() and "--maxShapes=input:8x3x32x32" in script.read_text()
    assert json.loads((tmp_path / "r.json").read_text())["tensorrt"]["trtexec_script"] == str(script)
