"""`vitslim compress` and `vitslim info --recipe` end to end on tiny random ViTs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, TINY_DEPTH, assert_user_error, run_cli, tiny
from vitslim.compress.tokens import TokenPruneConfig
from vitslim.recipes import list_recipes, load_recipe


def fits_tiny(name: str) -> bool:
    cfg = load_recipe(name).stages.get("tokens")
    return not isinstance(cfg, TokenPruneConfig) or max(cfg.layers) < TINY_DEPTH


def check_report(report: dict, out: Path) -> None:
    """The report contract: fp32 first, then one variant per recipe stage in order; ONNX parity,
    latency of both runtimes at each batch, one ONNX file per variant; fewer tokens and FLOPs
    after token reduction; every quantized site listed with the recipe's bits."""
    stages = list(report["recipe"]["stages"])
    fp32, *variants = report["variants"]
    assert [v["name"] for v in report["variants"]] == ["fp32", *stages]
    assert fp32["agreement"] == 1.0 and fp32["quantization"] is None
    for variant in report["variants"]:
        assert 0.0 <= variant["agreement"] <= 1.0
        assert variant["onnx"]["top1_agreement"] == 1.0, variant["onnx"]
        # Quantized graphs: ORT's and PyTorch's float sums differ in the last bits, which can move a
        # value across a rounding boundary (one code step); log/tan sites are emulated (test_export_qdq).
        limit = 1e-3 if variant["quantization"] is None else 5e-2
        assert variant["onnx"]["max_abs_diff"] < limit, variant["onnx"]
        assert {(lat["runtime"], lat["batch"]) for lat in variant["latency"]} == {
            (runtime, batch) for runtime in ("pytorch", "onnxruntime", "openvino") for batch in (1, 2)
        }
        # the OpenVINO IR: validated with the f32 hint, accuracy measured in OpenVINO's own precision
        ov = variant["openvino"]
        assert ov["validation"]["passed"], ov
        assert ov["parity_f32"]["top1_agreement"] == 1.0, ov
        assert ov["parity_f32"]["max_abs_diff"] < limit, ov
        assert (out / ov["file"]).is_file() and (out / ov["weights_file"]).is_file()
        assert ov["int8"]["compute_layers"] > 0
        if variant["quantization"] is not None:  # Linears in int8 (int4 weights: i4); fp8: no CPU kernel
            linears = ov["int8"]["layers"]["FullyConnected"]
            low_bit = linears.get("int8", 0) + linears.get("i4", 0)
            assert (low_bit == 0) if report["recipe"]["name"] == "fp8" else (low_bit > 0), ov["int8"]
    assert fp32["tokens_per_layer"] == [65] * (TINY_DEPTH + 1)
    if "tokens" in stages:
        tokens = variants[-1]["tokens_per_layer"]
        assert tokens[0] == 65 and tokens[-1] < 65 and all(a >= b for a, b in zip(tokens, tokens[1:], strict=False))
        assert variants[-1]["block_flops_per_image"] < fp32["block_flops_per_image"]
        later = variants[stages.index("tokens") :]  # sparsity and quantization keep the token schedule's FLOPs
        assert len({v["block_flops_per_image"] for v in later}) == 1
    if "sparsity" in stages:  # 2:4 holds in every sparsified block Linear, in PyTorch and in the ONNX weights
        per_block = {("blocks.*",): 4, ("blocks.*.mlp.fc2",): 1}[
            tuple(report["recipe"]["stages"]["sparsity"]["include"])
        ]
        layers = per_block * TINY_DEPTH
        for variant in variants[stages.index("sparsity") :]:
            check = variant["sparsity"]
            assert check["layers"] == layers
            assert check["pattern_in_model"] == check["pattern_in_onnx"] == check["onnx_layers_found"] == layers
        assert len(variants[stages.index("sparsity")]["sparsity"]["per_layer"]) == layers
        # weights only: its ONNX file is its base's traced graph with the new weights (parity checked below)
        assert variants[stages.index("sparsity")]["onnx"]["graph_of"] == ["fp32", *stages][stages.index("sparsity")]
    if "quant" in stages:
        cfg = report["recipe"]["stages"]["quant"]["config"]
        sites = variants[-1]["quantization"]["sites"]
        gptq = variants[-1]["quantization"]["gptq"]  # recorded when the recipe rounds with GPTQ
        assert (gptq is not None) == report["recipe"]["stages"]["quant"]["gptq"]
        head = int("head.weight" in sites)  # w8a8-trt keeps the head float
        assert gptq is None or len(gptq["layers"]) == 4 * TINY_DEPTH + head  # qkv, proj, fc1, fc2 per block + head
        mixed = report["recipe"]["stages"]["quant"]["mixed_precision"]
        weight_bits = {s["bits"] for s in sites.values() if s["kind"] == "weight"}
        if mixed is None:
            assert weight_bits == {cfg["weight"]["bits"]}
        else:  # the plan's bits, among the candidates, recorded per layer in the report
            assert weight_bits <= set(mixed["weight_bits"])
            plan = variants[-1]["mixed_precision"]
            assert {f"{name}.weight": lb["weight"] for name, lb in plan["layers"].items()} == {
                name: s["bits"] for name, s in sites.items() if s["kind"] == "weight"
            }
            assert plan["sensitivity"] and plan["costs"]["avg_weight_bits"] <= mixed["budget"]["avg_weight_bits"]
        for kind in ("post_softmax", "qk", "v"):  # a kind the preset keeps float has no quantizer at all
            expected = set() if cfg[kind] is None else {cfg[kind]["quantizer"]}
            assert {s["quantizer"] for s in sites.values() if s["kind"] == kind} == expected
    assert report["validation_failures"] == []
    assert all(v["onnx"]["validation"]["passed"] for v in report["variants"])
    files = [f"model_{v['name']}.{suffix}" for v in report["variants"] for suffix in ("onnx", "xml", "bin")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files) and list(manifest["variants"]) == [
        v["name"] for v in report["variants"]
    ]
    files += ["manifest.json", "report.html", "report.json", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert json.loads((out / "report.json").read_text()) == report


@pytest.mark.parametrize("name", list_recipes())
def test_builtin_recipes_end_to_end(tmp_path: Path, image_folder: Path, name: str) -> None:
    out = tmp_path / "out"
    args = ["compress", *tiny(), "--recipe", name, "--data", str(image_folder), "--calib", str(image_folder)]
    args += [*FAST, "--out", str(out)]
    if not fits_tiny(name):  # its layers lie beyond the tiny depth: a clear error, nothing written
        assert_user_error(run_cli(*args), f"out of range for a model of depth {TINY_DEPTH}")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
        return
    result = run_cli(*args, "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    check_report(report, out)
    assert report["recipe"]["name"] == name and report["recipe"]["stages"] == load_recipe(name).to_dict()["stages"]
    stages = report["recipe"]["stages"]
    for stage in stages:
        assert f"| {stage} | pytorch |" in result.output
        assert f"| {stage} | `model_{stage}.xml` |" in result.output  # the OpenVINO table
    if "tokens" in stages:
        assert "tokens per block 65 → " in result.output
    if stages.get("quant", {}).get("preset") == "w8a8-trt":  # laid out for TensorRT: no readiness finding
        last = report["variants"][-1]["onnx"]
        assert last["tensorrt_int8_ready"] and last["tensorrt"]["findings"] == []
        assert last["tensorrt"]["attention_blocks"] == TINY_DEPTH
        assert "| quant | " in result.output and "| ready |" in (out / "report.md").read_text()
    if stages.get("tokens", {}).get("schedule") == "constant":  # r >= 1 in every block
        tokens = report["variants"][-1]["tokens_per_layer"]
        assert all(a > b for a, b in zip(tokens, tokens[1:], strict=False))


def test_target_cpu_drops_2_4_sparsity_and_says_so(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "out"
    args = ["compress", *tiny(), "--recipe", "full", "--data", str(image_folder), "--calib", str(image_folder)]
    result = run_cli(*args, *FAST, "--target", "cpu", "--runtime", "onnxruntime", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["fp32", "tokens", "quant"]
    assert list(report["recipe"]["stages"]) == ["tokens", "quant"]
    assert report["target"]["name"] == "cpu" and list(report["target"]["dropped_stages"]) == ["sparsity"]
    assert "Target cpu: stage sparsity dropped: 2:4 sparsity brings no speed on a CPU" in result.output
    assert "sparsity" not in report["variants"][-1]


def test_alone_measures_each_later_stage_on_the_fp32_model(tmp_path: Path, image_folder: Path) -> None:
    recipe = tmp_path / "stack.yaml"
    recipe.write_text(
        "stages:\n  tokens: {r: 4}\n  sparsity: {method: magnitude, include: ['blocks.*.mlp.fc2']}\n"
        "  quant: {preset: w8a8, images: 4, mixed_precision: {budget: {avg_weight_bits: 6}, images: 2}}\n"
    )
    out = tmp_path / "out"
    args = ["compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), "--calib", str(image_folder)]
    for wrong, message in (("tokens", "is the recipe's first stage"), ("export", "is not a model stage")):
        assert_user_error(run_cli(*args, "--alone", wrong, "--out", str(out)), f"--alone {wrong}: '{wrong}' {message}")
        assert not out.exists()
    result = run_cli(*args, *FAST, "--alone", "sparsity,quant", "--runtime", "onnxruntime", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    fp32, sparse, quant, *stacked = report["variants"]
    names = ["fp32", "sparsity-alone", "quant-alone", "tokens", "sparsity", "quant"]
    assert [v["name"] for v in report["variants"]] == names
    assert sparse["tokens_per_layer"] == quant["tokens_per_layer"] == fp32["tokens_per_layer"]
    assert all(v["tokens_per_layer"] != fp32["tokens_per_layer"] for v in stacked)
    assert sparse["quantization"] is None and quant["quantization"] is not None
    assert sparse["sparsity"]["pattern_in_onnx"] == TINY_DEPTH and len(sparse["sparsity"]["per_layer"]) == TINY_DEPTH
    assert "sparsity" not in quant and stacked[-1]["sparsity"]["pattern_in_model"] == TINY_DEPTH
    assert [v["onnx"].get("graph_of") for v in report["variants"]] == [None, "fp32", None, None, "tokens", None]
    assert "model_sparsity.onnx is the ONNX graph traced for tokens with sparsity's weights" in result.output
    assert "per_layer" not in stacked[-1]["sparsity"] and quant["mixed_precision"]["costs"]["avg_weight_bits"] <= 6
    assert all(v["onnx"]["validation"]["passed"] for v in report["variants"])
    assert {lat["runtime"] for v in report["variants"] for lat in v["latency"]} == {"onnxruntime"}
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(f"model_{name}.onnx" for name in names)
    assert "| quant-alone | pytorch |" in result.output


def test_evit_recipe_file_end_to_end(tmp_path: Path, image_folder: Path) -> None:
    recipe = tmp_path / "evit.yaml"
    recipe.write_text("stages:\n  tokens: {method: evit, keep_rate: 0.5, layers: [0, 1]}\n")
    out = tmp_path / "out"
    result = run_cli(
        "compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), *FAST, "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    check_report(report, out)
    assert report["variants"][-1]["tokens_per_layer"] == [65, 34, 19]  # 32 kept + 1 fused + class; then 17 + 1 + 1
    assert report["variants"][-1]["description"] == "EViT keep 0.5 at layers 0,1"


def test_failed_validation_keeps_reports_and_renames_models(tmp_path: Path, image_folder: Path) -> None:
    recipe = tmp_path / "strict.yaml"
    recipe.write_text("stages:\n  quant: {preset: w8a8, images: 8}\n  validate: {max_abs_diff: 1.0e-12}\n")
    out = tmp_path / "out"
    args = ["compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), "--calib", str(image_folder)]
    result = run_cli(*args, *FAST, "--out", str(out))
    assert result.exit_code == 4, result.output
    report = json.loads((out / "report.json").read_text())
    # each variant's ONNX file (ONNX Runtime) and OpenVINO IR (f32 hint) failed, and was renamed
    assert len(report["validation_failures"]) == 4 and "failed validation against PyTorch" in result.stderr
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model_fp32.failed.onnx", "model_quant.failed.onnx"]
    assert sorted(p.name for p in out.glob("*.xml")) == ["model_fp32.failed.xml", "model_quant.failed.xml"]
    assert sorted(p.name for p in out.glob("*.bin")) == ["model_fp32.failed.bin", "model_quant.failed.bin"]
    for variant in report["variants"]:
        for record in (variant["onnx"], variant["openvino"]):
            assert record["validation"]["passed"] is False
            assert record["validation"]["reasons"][0].startswith("max abs diff")
        assert variant["openvino"]["file"].endswith(".failed.xml")


def test_tensorrt_export_without_tensorrt_writes_trtexec_script(tmp_path: Path, image_folder: Path) -> None:
    recipe = tmp_path / "trt.yaml"
    recipe.write_text("stages:\n  tokens: {r: 4}\n  export: {tensorrt: true}\n")
    out = tmp_path / "out"
    result = run_cli(
        "compress", *tiny(), "--recipe", str(recipe), "--data", str(image_folder), *FAST, "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    trt = report["tensorrt"]
    assert trt["engine"] is None and trt["variant"] == "tokens" and trt["int8"] is False
    script = (out / trt["trtexec_script"]).read_text()
    assert "trtexec --onnx=" in script and "model_tokens.onnx" in script and "--fp16" in script
    assert any("No TensorRT engine" in note for note in report["notes"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert trt["trtexec_script"] in {f["path"] for f in manifest["files"]}


@pytest.mark.parametrize(
    ("recipe_yaml", "message"),
    [
        ("stages: {tokns: {r: 8}}", "unknown key 'tokns' in recipe"),
        ("stages: {tokens: {r: [a]}}", "r must be an integer or a list of integers"),
        ("stages: {quant: {bits: 8}}", "unknown key 'bits'"),
        ("stages: {quant: {preset: w4a4-adalogg}}", "did you mean 'w4a4-adalog'"),
        ("stages: {quant: {mixed_precision: {budget: {avg_weight_bit: 4}}}}", "did you mean 'avg_weight_bits'"),
        ("stages: {quant: {mixed_precision: {budget: {avg_weight_bits: 4}, max_drop: 1}}}", "exactly one of"),
        ("stages: {validate: {min_agreement: 2}}", "min_agreement must be a fraction in [0, 1]"),
        ("stages: {export: {tensorrt: maybe}}", "tensorrt must be true or false"),
        ("stages: {export: {trt: true}}", "did you mean 'tensorrt'"),
    ],
)
def test_recipe_errors_are_one_line(tmp_path: Path, recipe_yaml: str, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(recipe_yaml + "\n")
    assert_user_error(run_cli("compress", *tiny(), "--recipe", str(recipe), "--out", str(tmp_path / "out")), message)
    assert_user_error(run_cli("info", *tiny(), "--recipe", str(recipe)), message)
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_name_lists_builtins(tmp_path: Path) -> None:
    result = run_cli("compress", *tiny(), "--recipe", "tome-r9", "--out", str(tmp_path / "out"))
    assert_user_error(result, "did you mean 'tome-r8'? built-in recipes: ")
    assert all(name in result.stderr for name in list_recipes())


def test_compress_refuses_non_empty_out(tmp_path: Path, image_folder: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    args = ["compress", *tiny(), "--recipe", "tome-r8", "--data", str(image_folder), "--out", str(tmp_path)]
    assert_user_error(run_cli(*args), "already exists and is not empty")
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_compress_needs_data_for_timm_models(tmp_path: Path) -> None:
    assert_user_error(run_cli("compress", *tiny(), "--recipe", "tome-r8", "--out", str(tmp_path / "o")), "--data")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["tome-r8", "evit-0.7"])
def test_info_recipe_shows_reduced_flops(tmp_path: Path, name: str) -> None:
    result = run_cli("info", *tiny(depth=12), "--recipe", name, "--json", str(tmp_path / "i.json"))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "i.json").read_text())
    reduction = info["token_reduction"]
    assert info["recipe"]["name"] == name and info["tokens_per_layer"] == [65] * 13
    assert reduction["tokens_per_layer"][0] == 65 and reduction["tokens_per_layer"][-1] < 65
    assert 0 < reduction["block_flops"] < reduction["unreduced_block_flops"]
    assert reduction["flops_ratio"] == pytest.approx(reduction["block_flops"] / reduction["unreduced_block_flops"])
    assert "reduced vs" in result.output and " -> ".join(map(str, reduction["tokens_per_layer"])) in result.output


def test_info_recipe_lists_quantizer_sites(tmp_path: Path) -> None:
    recipe = tmp_path / "q.yaml"
    recipe.write_text("stages:\n  quant: {preset: w4a4-adalog, config: {overrides: {'head.*': null}}}\n")
    result = run_cli("info", *tiny(), "--recipe", str(recipe), "--json", str(tmp_path / "i.json"))
    assert result.exit_code == 0, result.output
    quant = json.loads((tmp_path / "i.json").read_text())["quantization"]
    # per block: qkv, proj, fc1, fc2 weights and inputs, q, k, softmax, v; patch embed weight; head weight, input
    assert quant["sites"] == 12 * TINY_DEPTH + 3
    assert quant["by_kind"]["post_softmax: adalog 4-bit"] == TINY_DEPTH
    assert quant["by_kind"]["weight: float"] == 1 and quant["by_kind"]["weight: uniform 4-bit"] == 4 * TINY_DEPTH + 1
    assert "quant_sites: " in result.output and "x post_gelu: adalog 4-bit" in result.output


def test_verbose_logs_each_step_and_the_report_says_where(tmp_path: Path, image_folder: Path) -> None:
    from click.testing import CliRunner

    from vitslim.cli import cli

    out = tmp_path / "out"
    args = ["compress", *tiny(), "--recipe", "w8a8", "--data", str(image_folder), "--calib", str(image_folder)]
    result = CliRunner().invoke(cli, ["--verbose", *args, *FAST, "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for line in (
        "stage quant: w8a8 (32 calibration images, minmax search, GPTQ weights)",
        "quantized 17 sites, minmax search on 6 images",
        "GPTQ rounded 9 Linear weights",
        "quant: exported model_quant.onnx",
        "model_quant.onnx validation passed",
        "quant: onnxruntime on CPUExecutionProvider, batch 2: p50",
        "quant: pytorch on cpu, batch 1: p50",
        "model_quant.xml validation passed",
        "quant: openvino on CPU (",
    ):
        assert line in result.stderr, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["benchmark"]["device"] == "cpu"
    assert report["benchmark"]["onnxruntime_providers"] == ["CPUExecutionProvider"]
    devices = {(lat["runtime"], lat["device"]) for v in report["variants"] for lat in v["latency"]}
    ov_devices = {device for runtime, device in devices if runtime == "openvino"}
    assert devices - {("openvino", d) for d in ov_devices} == {
        ("pytorch", "cpu"),
        ("onnxruntime", "CPUExecutionProvider"),
    }
    # OpenVINO's default precision, plus the f32 baseline where that default is bf16
    assert ov_devices in ({"CPU (f32)"}, {"CPU (bf16)", "CPU (f32)"})
    assert "CPU " in (out / "report.md").read_text().split("## Latency (")[1].splitlines()[0]


def test_quiet_and_verbose_exclude_each_other() -> None:
    from click.testing import CliRunner

    from vitslim.cli import cli

    result = CliRunner().invoke(cli, ["--quiet", "--verbose", "info", *tiny()])
    assert result.exit_code == 2 and "exclude each other" in result.output


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("mps", "not supported (use cpu, cuda, cuda:N or auto)"),
        ("gpu0", "unknown device 'gpu0'"),
        pytest.param(
            "cuda",
            "PyTorch sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU"),
        ),
    ],
)
def test_bad_device_is_one_line_before_anything_runs(tmp_path: Path, device: str, message: str) -> None:
    out = tmp_path / "out"
    assert_user_error(run_cli("compress", *tiny(), "--recipe", "w8a8", "--device", device, "--out", str(out)), message)
    assert not out.exists()
