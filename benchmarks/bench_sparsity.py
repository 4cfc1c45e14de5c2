"""2:4 sparsity on the demo model: top-1 of magnitude, Wanda and SparseGPT, alone and with W8A8.

    .venv/bin/python benchmarks/bench_sparsity.py --limit 500 --calib 64 --threads 2

Every variant starts from the dense demo model: 2:4 sparsity on every Linear of the transformer
blocks (head dense) calibrated on ``--calib`` seeded Fashion-MNIST train images, then optionally
W8A8 uniform quantization (``QuantConfig.uniform(8, 8)``) calibrated on the same images. Top-1 and
agreement with the dense model are measured in PyTorch on a seeded sample of ``--limit``
Fashion-MNIST test images. A reference row runs NVIDIA ModelOpt's ``mts.sparsify(mode="sparsegpt")``
on the same model and images when ``nvidia-modelopt`` imports (an optional benchmark dependency,
``pip install nvidia-modelopt``); otherwise the results say why it is missing. On CPU 2:4 weights
run as dense ones: no latency is claimed here.

Writes sparsity_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
from run_header import run_header

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.sparsity import SparsityConfig, check_24, sparsify_
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import EvalData, evaluate_torch, load_eval_data
from vitslim.evaluate.latency import resolve_threads, torch_threads
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import LoadedModel, load_model
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
#: (method, sequential calibration); the one-pass SparseGPT row shows what the sequential scheme adds.
VARIANTS = (("magnitude", True), ("wanda", True), ("sparsegpt", True), ("sparsegpt", False))


def calibration_images(loaded: LoadedModel, images: int, seed: int) -> list[torch.Tensor]:
    """``images`` seeded, preprocessed Fashion-MNIST train images as batches of 32."""
    dataset = load_dataset("fashion-mnist:train", transform=build_transform(loaded.data_config))
    return [batch for batch, _ in make_loader(dataset, batch_size=32, limit=images, seed=seed)]


def pattern_counts(model: torch.nn.Module) -> dict[str, int]:
    """How many Linear layers (all, inside the blocks) hold the 2:4 pattern."""
    checked = check_24(model)
    blocks = [ok for name, ok in checked.items() if name.startswith("blocks.")]
    return {
        "linears": len(checked),
        "with_2_4": sum(checked.values()),
        "block_linears": len(blocks),
        "block_linears_with_2_4": sum(blocks),
    }


def modelopt_sparsegpt(model: torch.nn.Module, calib: list[torch.Tensor]) -> dict[str, Any]:
    """ModelOpt's SparseGPT in place (then exported to plain modules); what ran, or why not."""
    try:
        import modelopt
        import modelopt.torch.sparsity as mts
    except Exception as exc:  # noqa: BLE001 - any import failure is the recorded reason
        return {"error": f"nvidia-modelopt not importable: {type(exc).__name__}: {exc}"}
    start = time.perf_counter()
    try:
        with redirect_stdout(io.StringIO()):  # it prints one line per layer
            mts.sparsify(model, mode="sparsegpt", config={"data_loader": calib, "collect_func": lambda b: b})
            mts.export(model)
    except Exception as exc:  # noqa: BLE001 - recorded in the results instead of aborting the run
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
    return {"version": modelopt.__version__, "seconds": time.perf_counter() - start}


def run_variants(
    loaded: LoadedModel, data: EvalData, calib: list[torch.Tensor], args: argparse.Namespace
) -> list[dict]:
    """Dense, each method alone and with W8A8, one-pass SparseGPT and the ModelOpt reference, scored
    against dense."""
    rows: list[dict] = []
    reference = None

    def add(name: str, model: torch.nn.Module, **info: Any) -> None:
        nonlocal reference
        outputs = evaluate_torch(model, data, args.threads, progress=not args.quiet)
        if reference is None:
            reference = outputs
        rows.append({"name": name, **info, **pattern_counts(model), **score(outputs, reference, True)})
        print(f"{name}: top-1 {rows[-1]['top1']:.4f}, agreement {rows[-1]['agreement']:.4f}", file=sys.stderr)

    def quantized(model: torch.nn.Module) -> tuple[torch.nn.Module, float]:
        start = time.perf_counter()
        quantize_(model, QuantConfig.uniform(8, 8), calib, progress=not args.quiet, seed=0)
        return model, time.perf_counter() - start

    add("dense", loaded.model, method=None, quant=None)
    model, seconds = quantized(copy.deepcopy(loaded.model))
    add("dense+w8a8", model, method=None, quant="w8a8", quant_seconds=seconds)
    for method, sequential in VARIANTS:
        model = copy.deepcopy(loaded.model)
        cfg = SparsityConfig(method, images=args.calib, sequential=sequential)
        report = sparsify_(model, cfg, calib, progress=not args.quiet, seed=0)  # magnitude: data for errors only
        errors = [e["relative_error"] for e in report["layers"].values()]
        info = {
            "method": method,
            "sparsity_config": cfg.to_dict(),
            "sparsity": report["sparsity"],
            "sparsify_seconds": report["seconds"],
            "calibration_seconds": report["calibration_seconds"],
            "mean_layer_relative_error": sum(errors) / len(errors),
        }
        name = f"2:4 {method}" + ("" if sequential else " (one pass)")
        add(name, model, quant=None, **info)
        if sequential:
            model, seconds = quantized(model)
            add(f"{name}+w8a8", model, quant="w8a8", quant_seconds=seconds, **info)
    model = copy.deepcopy(loaded.model)
    modelopt = modelopt_sparsegpt(model, calib)
    if "error" in modelopt:
        rows.append({"name": "modelopt sparsegpt", "method": "modelopt:sparsegpt", **modelopt})
    else:
        add("modelopt sparsegpt", model, method="modelopt:sparsegpt", quant=None, modelopt=modelopt)
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def render_markdown(result: dict) -> str:
    env, data, bench = result["environment"], result["data"], result["benchmark"]
    rows = result["variants"]
    dense = rows[0]["top1"]
    lines = [
        f"# 2:4 sparsity on the demo model ({result['model']['name']})",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(env)}",
        f"- **Runtime**: PyTorch CPU, {bench['threads']} threads (accuracy only; 2:4 gives no CPU speed-up)",
        f"- **Data**: {data['name']}, {data['samples']} samples (seed 0); calibration: {bench['calibration']}",
        "- **Sparsity**: every Linear in `blocks.*` (head dense), 2:4 along the input dimension; "
        "W8A8: `QuantConfig.uniform(8, 8)` calibrated on the same images",
        f"- **Created**: {result['created']}",
        "",
        "| variant | top-1 | Δ top-1 (pt) | agreement vs dense | 2:4 block Linears | mean layer rel. error "
        "| sparsify s (calibration s) | W8A8 calibration s |",
        "|" + "---|" * 8,
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | not run: {row['error'].splitlines()[0]} |" + " |" * 6)
            continue
        drop = "n/a" if row["top1"] is None or dense is None else f"{100 * (row['top1'] - dense):+.2f}"
        err = row.get("mean_layer_relative_error")
        sparsify = row.get("sparsify_seconds") or row.get("modelopt", {}).get("seconds")
        calibration = row.get("calibration_seconds")
        lines.append(
            f"| {row['name']} | {_pct(row['top1'])} | {drop} | {_pct(row['agreement'])} "
            f"| {row['block_linears_with_2_4']}/{row['block_linears']} | {'' if err is None else f'{err:.3f}'} "
            f"| {_secs(sparsify)}{'' if calibration is None else f' ({calibration:.1f})'} "
            f"| {_secs(row.get('quant_seconds'))} |"
        )
    lines += [
        "",
        "Mean layer rel. error: ‖(W_sparse − W_dense)X‖ / ‖W_dense X‖ per layer on the calibration inputs",
        "it saw (block by block on the already-sparsified model; *one pass*: all on the dense model), averaged",
        "over layers (magnitude's mask ignores the data, which only measures its error). Sparsify seconds",
        "include calibration (the Hessian passes, in parentheses); ModelOpt's row times its `mts.sparsify` +",
        "`mts.export`. All rows use the same calibration images and evaluation sample.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--calib", type=int, default=128, help="Fashion-MNIST train images for calibration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    calib = calibration_images(loaded, args.calib, seed=0)
    start = time.perf_counter()
    with torch_threads(resolve_threads(args.threads)):
        variants = run_variants(loaded, data, calib, args)
    result = {
        **run_header(__file__, loaded),
        "data": data.describe(),
        "benchmark": {
            "runtime": "pytorch",
            "threads": resolve_threads(args.threads),
            "calibration": f"fashion-mnist:train, {sum(b.shape[0] for b in calib)} images (seed 0)",
            "accuracy_evaluated_with": "pytorch",
            "seconds": time.perf_counter() - start,
        },
        "variants": variants,
    }
    markdown = render_markdown(result)
    atomic_write_json(args.out_dir / "sparsity_demo.json", result)
    atomic_write_text(args.out_dir / "sparsity_demo.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
