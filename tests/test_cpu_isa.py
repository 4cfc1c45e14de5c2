"""Int8 on CPUs with and without VNNI: the ISA read from the CPU (faked here for each kind), the
``reduce_range`` decision it drives (7-bit weights where u8 x s8 kernels saturate) and what the
report says about it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY, images, meaningful_vit, run_cli
from tests.test_quant_stage import tiny_loaded
from vitslim.compress.quant import QuantConfig, SiteSpec, quant_points, quantize_
from vitslim.compress.quant.sites import find_sites
from vitslim.compress.quant.stage import QuantStage
from vitslim.errors import UserError
from vitslim.evaluate.environment import CPU_FLAGS_ENV, cpu_flags, int8_saturates
from vitslim.export.qdq import export_quantized_onnx
from vitslim.export.validate import check_parity
from vitslim.pipeline import StageContext, build_variants
from vitslim.recipes import parse_recipe

#: the CPU kinds the project runs on, by the flags /proc/cpuinfo lists
ISAS = {
    "avx2 (AMD EPYC Zen 1)": ("avx2", True),
    "avx512 without vnni (Skylake-SP)": ("avx2 avx512f", True),
    "avx512 vnni + bf16 (Sapphire Rapids, Zen 4)": ("avx2 avx512f avx512_vnni avx512_bf16", False),
    "avx-vnni (Alder Lake)": ("avx2 avx_vnni", False),
    "amx": ("avx2 avx512f avx512_vnni amx_int8 amx_bf16", False),
}


@pytest.mark.parametrize("isa", list(ISAS))
def test_int8_saturates_without_vnni_only(monkeypatch: pytest.MonkeyPatch, isa: str) -> None:
    flags, saturates = ISAS[isa]
    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    assert set(cpu_flags()) == set(flags.split())
    assert int8_saturates(machine="x86_64") is saturates
    assert int8_saturates(machine="aarch64") is False  # ARM's int8 dot products accumulate exactly


def test_flags_override_takes_commas_and_drops_unknown_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,avx512_vnni sse4_2")
    assert cpu_flags() == ["avx2", "avx512_vnni"]
    assert int8_saturates(["avx2"], "AMD64") and not int8_saturates(["avx2", "amx_int8"], "x86_64")


def test_max_weight_bits_caps_weight_sites_only() -> None:
    model = meaningful_vit()
    config = QuantConfig.preset("w8a8")
    capped = QuantConfig.from_dict({**config.to_dict(), "max_weight_bits": 7})
    assert capped.max_weight_bits == 7 and QuantConfig.from_dict(capped.to_dict()) == capped
    for site in find_sites(model):
        spec, base = capped.spec_for(site), config.spec_for(site)
        assert spec.bits == (7 if site.kind == "weight" else base.bits), site
    four = QuantConfig.uniform(4, 8, max_weight_bits=7)  # narrower weights are left alone
    assert {four.spec_for(s).bits for s in find_sites(model) if s.kind == "weight"} == {4}
    for bad in (1, 9, "7", True):
        with pytest.raises(UserError, match="max_weight_bits must be an integer in"):
            QuantConfig(max_weight_bits=bad)


@pytest.mark.parametrize(("cap", "codes"), [(7, (-63, 63)), (None, (-127, 127))])
def test_weight_codes_and_the_16_bit_pair_sums(tmp_path: Path, cap: int | None, codes: tuple[int, int]) -> None:
    """7-bit codes (±63) keep a u8 x s8 pair sum within int16 (2 · 255 · 63 = 32130), 8-bit ones
    (±127) do not; either way the exported graph run with reference kernels (ONNX Runtime's graph
    optimisations off: Q/DQ as float ops) computes what PyTorch computes: only fused int8 kernels
    depend on the CPU."""
    model = meaningful_vit()
    config = QuantConfig.uniform(8, 8, qk=SiteSpec("uniform", 8, {"symmetric": True}), max_weight_bits=cap)
    quantize_(model, config, [images(4)], search="minmax", progress=False)
    weights = [p for p in quant_points(model).values() if p.kind == "weight"]
    assert weights and all(p.quantizer.code_range() == codes for p in weights)
    assert (2 * 255 * codes[1] <= 2**15 - 1) is (cap == 7)
    path = export_quantized_onnx(model, tmp_path / "q.onnx", (3, 32, 32)).path
    parity = check_parity(model, path, images(16, seed=5), optimize=False)
    assert parity.top1_agreement == 1.0 and parity.max_abs_diff < 0.05


def test_quant_stage_reduce_range_setting() -> None:
    assert QuantStage.from_dict({}).reduce_range == "auto"
    stage = QuantStage.from_dict({"preset": "w8a8", "reduce_range": False})
    assert QuantStage.from_dict(stage.to_dict()) == stage
    assert [QuantStage.from_dict({"reduce_range": v}).reduces_range(s) for v in ("auto", True, False) for s in
            (True, False)] == [True, False, True, True, False, False]  # fmt: skip
    with pytest.raises(UserError, match="reduce_range"):
        QuantStage.from_dict({"reduce_range": "yes"})


@pytest.mark.parametrize("saturates", [True, False])
def test_pipeline_keeps_weights_to_7_bits_where_int8_saturates(image_folder: Path, saturates: bool) -> None:
    loaded = tiny_loaded()
    recipe = parse_recipe({"stages": {"quant": {"preset": "w8a8", "images": 2}}}, "inline.yaml", "inline")
    ctx = StageContext(loaded, calib=str(image_folder), progress=False, int8_saturates=saturates)
    (quant,) = build_variants(loaded.model, recipe, ctx)
    bits = {p.quantizer.bits for p in quant_points(quant.model).values() if p.kind == "weight"}
    assert bits == ({7} if saturates else {8})
    assert ("weights kept to 7 bits (reduce_range)" in quant.description) is saturates


@pytest.mark.parametrize(
    ("flags", "target", "bits"), [("avx2", None, 7), ("avx2", "gpu", 8), ("avx2 avx_vnni", None, 8)]
)
def test_compress_reads_the_cpu_and_says_why_weights_have_7_bits_and_warns(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, flags: str, target: str | None, bits: int
) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    recipe = tmp_path / "q.yaml"
    recipe.write_text("name: q\nstages:\n  quant: {preset: w8a8, images: 2, search: minmax}\n")
    out = tmp_path / "out"
    fast = ["--runs", "1", "--warmup", "0", "--batch-sizes", "1", "--threads", "1", "--runtime", "onnxruntime"]
    extra = ["--target", target] if target else []
    result = run_cli("compress", *TINY, "--recipe", str(recipe), "--data", str(image_folder), "--calib",
                 str(image_folder), *fast, *extra, "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    quant = report["variants"][-1]
    assert {s["bits"] for s in quant["quantization"]["sites"].values() if s["kind"] == "weight"} == {bits}
    assert report["environment"]["int8_saturates"] is (flags == "avx2")
    noted = any("at most 7 bits (reduce_range)" in note for note in report["notes"])
    assert noted is (bits == 7) and ("reduce_range" in (out / "report.md").read_text()) is (bits == 7)
    assert quant["onnx"]["validation"]["passed"]
    # said before the run: int8 rarely pays on a CPU without VNNI (not for a GPU target)
    assert ("this CPU has no VNNI" in result.stderr) is (bits == 7), result.stderr


def test_a_deviating_int8_kernel_fails_validation_and_is_told_apart_from_a_wrong_graph(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 8-bit weights on a CPU whose int8 kernels saturate, the deployed file disagrees with
    PyTorch: validation fails (exit 4, file quarantined) and says that ONNX Runtime's reference
    kernels match PyTorch, so the deviation is the CPU's. The saturating kernel is faked here: the
    optimised session's logits of quantized files are shuffled across classes."""
    import vitslim.pipeline.measure as measure

    real = measure.evaluate_onnx

    def saturating(path, *args, **kwargs):
        outputs = real(path, *args, **kwargs)
        if "quant" in Path(path).name:
            outputs.logits = outputs.logits.roll(1, dims=-1)
        return outputs

    monkeypatch.setattr(measure, "evaluate_onnx", saturating)
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2")
    recipe = tmp_path / "q.yaml"
    quant = "{preset: w8a8, images: 2, search: minmax, reduce_range: false}"
    recipe.write_text(f"name: q\nstages:\n  quant: {quant}\n  validate: {{noise_floor: false}}\n")  # 6 images
    out = tmp_path / "out"
    fast = ["--runs", "1", "--warmup", "0", "--batch-sizes", "1", "--threads", "1", "--runtime", "onnxruntime"]
    result = run_cli("compress", *TINY, "--recipe", str(recipe), "--data", str(image_folder), "--calib",
                 str(image_folder), *fast, "--out", str(out))  # fmt: skip
    assert result.exit_code == 4, result.output
    report = json.loads((out / "report.json").read_text())
    validation = report["variants"][-1]["onnx"]["validation"]
    assert not validation["passed"] and validation["reference_kernels"]["passed"]
    assert validation["reference_kernels"]["top1_agreement"] == 1.0
    (failure,) = report["validation_failures"]
    assert "the deviation comes from this CPU's int8 kernels; this CPU has no VNNI" in failure
    assert (out / "model_quant.failed.onnx").is_file() and not (out / "model_quant.onnx").exists()
