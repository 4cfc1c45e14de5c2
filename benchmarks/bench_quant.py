"""Post-training quantization presets on the demo model: top-1, agreement with FP32, calibration time.

    .venv/bin/python benchmarks/bench_quant.py --limit 1000 --calib 128 --threads 2 --ort-static \
        --recipes w8a8+nearest,w8a8,w6a6-log+nearest,w6a6-log,w4a4-uniform,w4a4-adalog,w4a4-tanq

Each quantization recipe (w8a8, w6a6-log, w4a4-uniform, w4a4-adalog, w4a4-tanq, ...) is
calibrated on the same seeded Fashion-MNIST train images (search as in its built-in recipe) and
evaluated in PyTorch (fake-quant) on the same seeded test sample as FP32. ``NAME+gptq`` /
``NAME+nearest`` run a recipe with GPTQ / round-to-nearest weights whatever the recipe says,
``NAME+bc`` with bias correction (suffixes combine: ``w6a6-log+nearest+bc``).
``--ort-static`` adds ONNX Runtime's own ``quantize_static`` (QDQ, per-channel, MinMax) of the
FP32 ONNX on the same calibration images, evaluated in ONNX Runtime. Latency of quantized ONNX
models: benchmarks/bench_export.py.

Writes quant_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from run_header import run_header

from vitslim.compress.quant.stage import QuantStage, apply
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import evaluate_onnx, evaluate_torch, load_eval_data
from vitslim.export.onnx_export import export_onnx
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import load_model
from vitslim.pipeline import StageContext
from vitslim.recipes import list_recipes, load_recipe
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("w8a8", "w6a6-log", "w4a4-uniform", "w4a4-adalog", "w4a4-tanq")
#: recipe-name suffixes and the stage settings they force
SUFFIXES = {"gptq": {"gptq": True}, "nearest": {"gptq": False}, "bc": {"bias_correction": True}}


def quant_stage(entry: str, images: int) -> QuantStage:
    """The quant stage of built-in recipe ``entry``; each ``+SUFFIX`` (:data:`SUFFIXES`) forces a setting."""
    name, *suffixes = entry.split("+")
    if (
        name not in list_recipes()
        or "quant" not in load_recipe(name).stages
        or any(suffix not in SUFFIXES for suffix in suffixes)
    ):
        options = ", ".join("+" + suffix for suffix in SUFFIXES)
        raise SystemExit(f"{entry} is not a built-in quantization recipe (with optional {options})")
    stage = dataclasses.replace(load_recipe(name).stages["quant"], images=images)
    for suffix in suffixes:
        stage = dataclasses.replace(stage, **SUFFIXES[suffix])
    return stage


def ort_static_row(loaded, data, calib: list, threads: int, reference) -> dict:
    """ONNX Runtime's quantize_static W8A8 of the FP32 export, scored in ONNX Runtime."""
    from bench_export import ort_quantize_static, ort_quantizer_input  # the export benchmark's peer

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(loaded.model, Path(tmp) / "fp32.onnx", loaded.input_size)
        start = time.perf_counter()
        static = ort_quantize_static(ort_quantizer_input(fp32), Path(tmp) / "ort-static.onnx", calib)
        seconds = time.perf_counter() - start
        outputs = evaluate_onnx(static, data, threads)
    return {
        "name": "ort-quantize-static",
        "description": "ONNX Runtime quantize_static W8A8 (QDQ, per-channel, MinMax); evaluated in ONNX Runtime",
        "calibration_seconds": seconds,
        **score(outputs, reference, True),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images (seeded sample)")
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipes",
        default=",".join(RECIPES),
        help="comma-separated quant recipe names (+gptq / +nearest: weight rounding forced; +bc: bias correction)",
    )
    parser.add_argument("--ort-static", action="store_true", help="add ONNX Runtime's quantize_static W8A8")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, args.seed, 32)
    ctx = StageContext(loaded, seed=args.seed, progress=True)
    reference = evaluate_torch(loaded.model, data, args.threads)
    rows = [{"name": "fp32", "calibration_seconds": 0.0, **score(reference, None, True)}]
    stages = {name: quant_stage(name, args.calib) for name in args.recipes.split(",")}
    if args.ort_static:
        rows.append(ort_static_row(loaded, data, ctx.calibration(args.calib), args.threads, reference))
    for name, stage in stages.items():
        model = copy.deepcopy(loaded.model)
        start = time.perf_counter()
        apply(model, stage, ctx)
        seconds = time.perf_counter() - start
        outputs = evaluate_torch(model, data, args.threads)
        rows.append(
            {
                "name": name,
                "description": stage.describe(),
                "calibration_seconds": seconds,
                **score(outputs, reference, True),
            }
        )
        print(f"{name}: top-1 {rows[-1]['top1']:.2%}, calibration {seconds:.0f} s", file=sys.stderr)
        write_results(args, argv, loaded, data, rows)  # after every row: a long run keeps what it measured
    print((args.out_dir / "quant_demo.md").read_text())


def write_results(args: argparse.Namespace, argv: list[str] | None, loaded, data, rows: list[dict]) -> None:
    """quant_demo.{json,md} in ``args.out_dir`` for the rows measured so far."""
    result = {
        **run_header(__file__, loaded, argv),
        "data": data.describe(),
        "calibration": {"name": loaded.default_calib, "images": args.calib, "seed": args.seed},
        "threads": args.threads,
        "rows": rows,
    }
    fp32 = rows[0]["top1"]
    lines = [
        "# Post-training quantization on the demo model",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(result['environment'])}",
        f"- **Data**: {data.name}, {data.samples} samples (seed {args.seed}); evaluated in PyTorch (fake-quant), "
        "ONNX Runtime's own quantizer in ONNX Runtime",
        f"- **Calibration**: {loaded.default_calib}, {args.calib} images (seed {args.seed})",
        f"- **Created**: {result['created']}",
        "",
        "| recipe | what | top-1 | Δ top-1 (pt) | agreement vs FP32 | calibration s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row.get('description', 'uncompressed model')} | {row['top1']:.2%} | "
            f"{100 * (row['top1'] - fp32):+.2f} | {row['agreement']:.2%} | {row['calibration_seconds']:.0f} |"
        )
    lines += ["", "Calibration time is wall-clock on this machine, including the calibration forward passes."]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "quant_demo.json", result)
    atomic_write_text(args.out_dir / "quant_demo.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
