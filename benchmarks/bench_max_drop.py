"""Mixed precision with an accuracy bound on the demo model: does a ``max_drop`` plan hold its
bound on the test split, and how long does a 4.5-bit budget plan take?

    .venv/bin/python benchmarks/bench_max_drop.py --limit 500 --calib 64 --threads 2

The ``max_drop`` plan is searched on the calibration images alone (half of them held out to
measure the drop), then quantized on all of them and scored on a seeded test sample against
FP32. The 4.5-bit plan is timed from a fresh sensitivity cache. Activations: uniform 8-bit,
min/max ranges (the ``w8a8`` recipe's calibration). Writes max_drop_demo.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from run_header import run_header

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.quant.mixed import plan_mixed_precision
from vitslim.compress.quant.mixed.search import images_and_labels
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import evaluate_torch, load_eval_data
from vitslim.evaluate.latency import resolve_threads
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import load_model
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
SEARCH = "minmax"


def _plans(model: torch.nn.Module, base: QuantConfig, calib: list, labels: list, max_drop: float) -> tuple[list, Any]:
    """Time a 4.5-bit budget plan and search a ``max_drop`` plan (one sensitivity cache); the rows
    and the bounded plan."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        t0, c0 = time.perf_counter(), time.process_time()
        budget = plan_mixed_precision(
            model,
            base,
            {"budget": {"avg_weight_bits": 4.5}},
            calib,
            cache_dir=cache,
            progress=False,
            quantize_options={"search": SEARCH},
        )
        rows.append(
            {
                "plan": "budget 4.5 avg bits",
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
                "avg_weight_bits": budget.meta["costs"]["avg_weight_bits"],
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        bounded = plan_mixed_precision(
            model,
            base,
            {"max_drop": max_drop},
            [(calib, labels)],
            cache_dir=cache,
            progress=True,
            quantize_options={"search": SEARCH},
        )
        rows.append(
            {
                "plan": f"max_drop {max_drop:g} pt",
                "seconds": time.perf_counter() - t0,
                "avg_weight_bits": bounded.meta["costs"]["avg_weight_bits"],
                "drop_on_held_out_calibration": bounded.meta["drop"]["measured"],
                "held_out_images": bounded.meta["drop"]["held_out_images"],
            }
        )
    return rows, bounded


def _markdown(result: dict, calib_images: int, test_images: int) -> list[str]:
    lines = [
        "# Mixed precision with an accuracy bound on the demo model",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(result['environment'])}",
        f"- **Data**: {calib_images} Fashion-MNIST train images for calibration (the drop search holds out half);"
        f" test: {test_images} seeded Fashion-MNIST test images; activations uniform 8-bit, {SEARCH} ranges",
        f"- **Created**: {result['created']}",
        "",
        "| plan | avg weight bits | search s | drop on held-out calibration (pt) | test top-1 | fp32 test top-1 "
        "| test drop (pt) | bound holds on test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        tested = "test_top1" in r
        cells = [
            r["plan"],
            f"{r['avg_weight_bits']:.2f}",
            f"{r['seconds']:.0f}",
            f"{r['drop_on_held_out_calibration']:.2f}" if "drop_on_held_out_calibration" in r else "",
            f"{100 * r['test_top1']:.2f}%" if tested else "",
            f"{100 * r['fp32_test_top1']:.2f}%" if tested else "",
            f"{r['test_drop']:.2f}" if tested else "",
            str(r["holds"]) if tested else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--calib", type=int, default=64, help="Fashion-MNIST train images (half held out)")
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy bound in top-1 points")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(resolve_threads(args.threads))
    loaded = load_model("demo")
    model = loaded.model.eval()
    train = load_dataset("fashion-mnist:train", transform=build_transform(loaded.data_config))
    calib, labels = images_and_labels(make_loader(train, batch_size=32, limit=args.calib, seed=0))
    base = QuantConfig.preset("w8a8")
    rows, bounded = _plans(model, base, calib, labels, args.max_drop)
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    fp32 = evaluate_torch(model, data, args.threads, progress=False)
    qmodel = quantize_(copy.deepcopy(model), bounded.to_quant_config(base), [calib], search=SEARCH, progress=False)
    scored = score(evaluate_torch(qmodel, data, args.threads, progress=False), fp32, True)
    fp32_top1 = score(fp32, None, True)["top1"]
    rows[-1].update(test_top1=scored["top1"], fp32_test_top1=fp32_top1, test_drop=100 * (fp32_top1 - scored["top1"]))
    rows[-1]["holds"] = rows[-1]["test_drop"] <= args.max_drop
    result = {
        **run_header(__file__, loaded),
        "data": {"test": data.describe(), "calibration_images": args.calib},
        "rows": rows,
    }
    lines = _markdown(result, args.calib, data.samples)
    atomic_write_json(args.out_dir / "max_drop_demo.json", result)
    atomic_write_text(args.out_dir / "max_drop_demo.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
