"""Quantized ONNX export on the demo model: our explicit Q/DQ against ONNX Runtime's own quantizers.

    .venv/bin/python benchmarks/bench_export.py --limit 2000 --threads 2

Variants, all run by ONNX Runtime (CPU EP) in this one process:

* ``fp32``: the FP32 export (the reference for speedups, size ratios and agreement);
* ``w8a8-uniform-qdq``: ``quantize_(QuantConfig.uniform(8, 8))`` on the calibration images, exported
  with ``export_quantized_onnx`` (int8 per-channel weights, uint8 activations, Q/DQ on MatMul inputs);
* ``w8a8-qdq``: the ``w8a8`` preset (the same, with a twin-uniform post-softmax map run as two
  integer MatMuls and the post-LN / attention-output reparameterisations);
* ``tome16-w8a8-qdq``: ToMe with a constant r=16, then the ``w8a8`` preset and export;
* ``ort-static-qdq``: ``onnxruntime.quantization.quantize_static`` of the FP32 ONNX (QDQ format,
  per-channel int8 weights, uint8 activations, MinMax calibration on the same images);
* ``ort-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` of the FP32 ONNX (int8 weights).

For each: top-1 on the seeded Fashion-MNIST test sample and agreement with FP32 (both in ONNX
Runtime), p50 latency at batch 1 and 16, speedup and file-size ratio against FP32, the kernels ONNX
Runtime actually runs (integer MatMuls after its graph optimisations), and for our exports the
validation against the PyTorch fake-quant model: with ONNX Runtime's graph optimisations off, on the
whole test sample (the export itself; judged like the pipeline's ``validate`` stage: 99% agreement,
or not significantly under PyTorch's own agreement with itself under float-level input noise) and
on, on the first test batch (its fused integer kernels; recorded).

Writes export_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from run_header import run_header

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import EvalData, evaluate_onnx, evaluate_torch, load_eval_data
from vitslim.evaluate.latency import DEFAULT_WARMUP, bench_ort, resolve_threads, torch_threads
from vitslim.evaluate.parity import noise_floor
from vitslim.evaluate.runtimes import ort_runtime_ops
from vitslim.export.onnx_export import DEFAULT_OPSET, export_onnx
from vitslim.export.qdq import export_quantized_onnx
from vitslim.export.validate import ValidateStage, judge, validate_onnx
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import LoadedModel, load_model
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 16)
INTEGER_KERNELS = (
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "QGemm",
    "QLinearConv",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
)


def calibration_batches(loaded: LoadedModel, images: int, seed: int) -> list[torch.Tensor]:
    dataset = load_dataset(loaded.default_calib or "fashion-mnist:train", transform=build_transform(loaded.data_config))
    return [batch for batch, _ in make_loader(dataset, batch_size=16, limit=images, seed=seed)]


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over the calibration images (one at a time)."""

    def __init__(self, batches: list[torch.Tensor], name: str) -> None:
        self.items = iter([{name: b[i : i + 1].numpy()} for b in batches for i in range(b.shape[0])])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def ort_quantizer_input(fp32: Path) -> Path:
    """A copy of an FP32 export without value_info (``<name>-plain.onnx``): ORT's quantizers re-run
    shape inference, which trips over the exporter's value_info."""
    plain = fp32.with_name(fp32.stem + "-plain.onnx")
    proto = onnx.load(str(fp32))
    del proto.graph.value_info[:]
    onnx.save(proto, str(plain))
    return plain


def ort_quantize_static(plain: Path, out: Path, calib: list[torch.Tensor]) -> Path:
    """ONNX Runtime's own W8A8 of an FP32 model (:func:`ort_quantizer_input`): ``quantize_static``,
    QDQ, per-channel int8 weights, uint8 activations (MinMax) on the MatMul/Gemm/Conv inputs,
    calibrated on ``calib``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(plain),
        str(out),
        _Reader(calib, "input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
    )
    return out


def judged_validation(model: torch.nn.Module, path: Path, data: EvalData, threads: int) -> dict:
    """The export itself (ONNX Runtime with its graph optimisations off: Q/DQ as float ops) against
    PyTorch on the whole test sample, judged as the pipeline's ``validate`` stage judges it (under
    99% agreement, not significantly under PyTorch's own noise floor); exits when it fails."""
    parity = validate_onnx(model, path, data.batches, threads=threads, optimize=False, threshold=0.0).to_dict()
    verdict = judge(
        {"onnx": parity},
        ValidateStage(),
        lambda: noise_floor(model, data, evaluate_torch(model, data, threads, progress=False), threads, False),
    )["onnx"]
    if verdict.reasons:
        raise SystemExit(f"{path.name} failed validation against PyTorch: {'; '.join(verdict.reasons)}")
    return {**parity, "noise_floor": None if verdict.floor is None else verdict.floor["agreement"]}


def build_variants(
    loaded: LoadedModel, calib: list[torch.Tensor], folder: Path, data: EvalData, search: str, threads: int
) -> list[dict]:
    """Export every variant; returns rows with the file path and (ours) the PyTorch validation."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    size = loaded.input_size
    first, _ = next(iter(data.batches))
    rows = []
    fp32 = export_onnx(loaded.model, folder / "fp32.onnx", size)
    rows.append({"name": "fp32", "description": "FP32 export", "path": fp32})
    plain = ort_quantizer_input(fp32)
    static = ort_quantize_static(plain, folder / "ort-static-qdq.onnx", calib)
    rows.append(
        {"name": "ort-static-qdq", "description": "ORT quantize_static (QDQ, per-channel, MinMax)", "path": static}
    )
    dynamic = folder / "ort-dynamic.onnx"
    quantize_dynamic(str(plain), str(dynamic), weight_type=QuantType.QInt8)
    rows.append({"name": "ort-dynamic", "description": "ORT quantize_dynamic (int8 weights)", "path": dynamic})
    ours = (
        ("w8a8-uniform-qdq", None, QuantConfig.uniform(8, 8), "vitslim W8A8 uniform everywhere"),
        ("w8a8-qdq", None, QuantConfig.preset("w8a8"), "vitslim w8a8 preset"),
        ("tome16-w8a8-qdq", TokenMergeConfig(r=16), QuantConfig.preset("w8a8"), "ToMe r=16 (constant) + w8a8 preset"),
    )
    for name, tome, cfg, what in ours:
        model = copy.deepcopy(loaded.model)
        if tome is not None:
            apply_token_reduction(model, tome)
        start = time.perf_counter()
        with torch_threads(resolve_threads(threads)):
            quantize_(model, cfg, calib, search=search, progress=False)
        quant_s = time.perf_counter() - start
        result = export_quantized_onnx(model, folder / f"{name}.onnx", size)
        check = judged_validation(model, result.path, data, threads)
        # ONNX Runtime's fused integer kernels round differently on some CPUs: recorded, not gated.
        fused = validate_onnx(model, result.path, first, threads=resolve_threads(threads), threshold=0.0)
        rows.append(
            {
                "name": name,
                "description": f"{what} (search {search}), explicit Q/DQ",
                "path": result.path,
                "quantize_seconds": quant_s,
                "validation": check,
                "validation_fused": fused.to_dict(),
                "qdq": {k: v for k, v in result.to_dict().items() if k not in ("sites", "graph", "path")},
            }
        )
    return rows


def run(loaded: LoadedModel, data: EvalData, calib: list[torch.Tensor], args: argparse.Namespace) -> list[dict]:
    threads = resolve_threads(args.threads)
    classifier = loaded.num_classes > 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_variants(loaded, calib, Path(tmp), data, args.search, threads)
        outputs = [evaluate_onnx(row["path"], data, threads, progress=False) for row in rows]
        for row, out in zip(rows, outputs, strict=True):
            row.update(score(out, outputs[0], classifier))
            row["size_bytes"] = row["path"].stat().st_size
            row["runtime_ops"] = ort_runtime_ops(row["path"], threads)
            row["integer_kernels"] = {k: v for k, v in row["runtime_ops"].items() if k in INTEGER_KERNELS}
        for row in rows:  # timings back to back, after all the evaluation
            latency = bench_ort(
                str(row["path"]),
                loaded.input_size,
                list(BATCH_SIZES),
                threads,
                progress=False,
                warmup=args.warmup,
                runs=args.runs,
            )
            row["latency"] = [entry.to_dict() for entry in latency]
    base = rows[0]
    base_p50 = {lat["batch"]: lat["p50_ms"] for lat in base["latency"]}
    for row in rows:
        row["path"] = row["path"].name
        row["speedup"] = {str(lat["batch"]): base_p50[lat["batch"]] / lat["p50_ms"] for lat in row["latency"]}
        row["size_ratio"] = row["size_bytes"] / base["size_bytes"]
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _p50(row: dict, batch: int) -> float:
    return next(lat["p50_ms"] for lat in row["latency"] if lat["batch"] == batch)


def render_markdown(result: dict) -> str:
    env, data, bench = result["environment"], result["data"], result["benchmark"]
    lines = [
        f"# Quantized ONNX export on the demo model ({result['model']['name']})",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(env)}",
        f"- **Runtime**: ONNX Runtime CPU EP, ORT_ENABLE_ALL, {bench['threads']} threads, random inputs, "
        f"{bench['warmup']} warm-up + up to {bench['runs']} timed runs per setting (p50)",
        f"- **Data**: {data['name']}, {data['samples']} samples (seed 0), evaluated in ONNX Runtime; "
        f"calibration: {bench['calibration_images']} Fashion-MNIST train images",
        f"- **Created**: {result['created']}",
        "",
        "| variant | setting | top-1 | agreement vs FP32 | p50 ms b1 | speedup b1 | p50 ms b16 | speedup b16 "
        "| size MB | size ratio | integer kernels ORT runs |",
        "|" + "---|" * 11,
    ]
    for row in result["variants"]:
        kernels = ", ".join(f"{k}×{v}" for k, v in row["integer_kernels"].items()) or "none"
        lines.append(
            f"| {row['name']} | {row['description']} | {_pct(row['top1'])} | {_pct(row['agreement'])} "
            f"| {_p50(row, 1):.1f} | {row['speedup']['1']:.2f}x | {_p50(row, 16):.1f} | {row['speedup']['16']:.2f}x "
            f"| {row['size_bytes'] / 1e6:.1f} | {row['size_ratio']:.2f} | {kernels} |"
        )
    lines += ["", "Validation of our exports against the PyTorch fake-quant model:", ""]
    for row in result["variants"]:
        if "validation" in row:
            v, fused = row["validation"], row["validation_fused"]
            floor = "" if v["noise_floor"] is None else f" (PyTorch's own noise floor {_pct(v['noise_floor'])})"
            lines.append(
                f"- {row['name']}: top-1 agreement {_pct(v['top1_agreement'])}{floor}, max abs diff "
                f"{v['max_abs_diff']:.3g} on {v['samples']} images with ONNX Runtime's graph optimisations off "
                f"(Q/DQ as float ops); with them (fused integer kernels) {_pct(fused['top1_agreement'])}, "
                f"max abs diff {fused['max_abs_diff']:.3g} on {fused['samples']} images; quantize_ took "
                f"{row['quantize_seconds']:.0f} s"
            )
    lines += [
        "",
        "Speedups and size ratios: FP32 / variant, same runtime, batch and threads, measured in the same run. "
        "Integer kernels: the op types ONNX Runtime runs after its graph optimisations.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--calib-images", type=int, default=64, help="Fashion-MNIST train images to calibrate on")
    parser.add_argument("--search", default="mse", help="quantize_ search (mse, minmax, percentile, progressive)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per setting and batch size")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    calib = calibration_batches(loaded, args.calib_images, seed=0)
    result = {
        **run_header(__file__, loaded),
        "data": data.describe(),
        "benchmark": {
            "runtime": "onnxruntime",
            "threads": resolve_threads(args.threads),
            "batch_sizes": list(BATCH_SIZES),
            "warmup": args.warmup,
            "runs": args.runs,
            "inputs": "random normal",
            "opset": DEFAULT_OPSET,
            "calibration_images": sum(b.shape[0] for b in calib),
            "accuracy_evaluated_with": "onnxruntime",
        },
        "variants": run(loaded, data, calib, args),
    }
    markdown = render_markdown(result)
    atomic_write_json(args.out_dir / "export_demo.json", result)
    atomic_write_text(args.out_dir / "export_demo.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
