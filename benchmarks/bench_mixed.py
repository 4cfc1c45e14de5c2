"""Mixed-precision weights on the demo model: top-1 against average weight bits, and plan search time.

    .venv/bin/python benchmarks/bench_mixed.py --limit 500 --threads 2

Uniform 4/5/6/8-bit weights against greedy mixed-precision plans at 4.0, 4.5 and 5.0 average
weight bits (parameter-weighted over every Linear and the patch embedding), activations 8-bit
uniform everywhere. Calibration: a seeded sample of the Fashion-MNIST train split (the first
``--sens-images`` of it also give the sensitivities); top-1 and agreement with FP32 on a seeded
sample of the test split, in PyTorch (fake quantization). The first plan's search time includes
the sensitivity measurement (fresh cache); the later plans reuse the cached table.

Writes mixed_demo.{json,md,png} and mixed_demo_proxy.png into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from run_header import run_header

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.quant.mixed import (
    MixedPrecisionConfig,
    build_path,
    measure_sensitivity,
    pareto_sweep,
    plan_mixed_precision,
    plot_pareto,
)
from vitslim.compress.quant.mixed.search import images_and_labels
from vitslim.compress.quant.search import SEARCHES
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import evaluate_torch, load_eval_data
from vitslim.evaluate.latency import resolve_threads
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import load_model
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
UNIFORM_BITS = (4, 5, 6, 8)
MIXED_BUDGETS = (4.5, 4.0, 5.0)  # the first one is timed with a fresh sensitivity cache
ACT_BITS = 8


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(resolve_threads(args.threads))
    loaded = load_model("demo")
    model = loaded.model.eval()
    train = load_dataset("fashion-mnist:train", transform=build_transform(loaded.data_config))
    calib = images_and_labels(make_loader(train, batch_size=32, limit=args.calib, seed=0))[0]
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    base = QuantConfig.uniform(8, ACT_BITS)
    plans, searches, cpu = {}, {}, {}
    with tempfile.TemporaryDirectory() as cache:  # plans first: search times on a quiet process
        for budget in MIXED_BUDGETS:
            mp = MixedPrecisionConfig.from_dict({"budget": {"avg_weight_bits": budget}, "images": args.sens_images})
            t0, c0 = time.perf_counter(), time.process_time()
            plans[budget] = plan_mixed_precision(model, base, mp, calib, cache_dir=cache, progress=False, seed=0)
            searches[budget] = time.perf_counter() - t0
            cpu[budget] = time.process_time() - c0
            print(
                f"plan {budget}: {searches[budget]:.1f} s, {cpu[budget]:.1f} CPU s (sensitivity cache "
                f"{plans[budget].meta['sensitivity']['cache']})",
                flush=True,
            )
        table = measure_sensitivity(
            model, base, calib[: args.sens_images], measure_bits=mp.anchors, cache_dir=cache, progress=False
        )

    fp32 = evaluate_torch(model, data, args.threads, progress=False)
    rows = [{"name": "fp32", "kind": "fp32", "avg_weight_bits": 32.0, **score(fp32, None, True)}]

    def measure(name: str, kind: str, cfg: QuantConfig, extra: dict) -> dict:
        t0 = time.perf_counter()
        qmodel = quantize_(copy.deepcopy(model), cfg, [calib], search=args.search, progress=False, seed=0)
        calib_s = time.perf_counter() - t0
        outputs = evaluate_torch(qmodel, data, args.threads, progress=False)
        row = {"name": name, "kind": kind, **extra, "calibration_seconds": calib_s, **score(outputs, fp32, True)}
        print(f"{name}: top-1 {100 * row['top1']:.2f}%  agreement {100 * row['agreement']:.2f}%", flush=True)
        return row

    for budget, plan in sorted(plans.items()):
        extra = {
            "budget_avg_weight_bits": budget,
            "avg_weight_bits": plan.meta["costs"]["avg_weight_bits"],
            "plan_search_seconds": searches[budget],
            "plan_search_cpu_seconds": cpu[budget],
            "sensitivity_cache": plan.meta["sensitivity"]["cache"],
            "proxy_score": plan.meta["score"],
            "weight_bits": plan.weight_bits(),
        }
        rows.append(measure(f"mixed-{budget}", "mixed", plan.to_quant_config(base), extra))
    for bits in UNIFORM_BITS:
        cfg = QuantConfig.uniform(bits, ACT_BITS)
        rows.append(measure(f"uniform-w{bits}a{ACT_BITS}", "uniform", cfg, {"avg_weight_bits": float(bits)}))
    path = build_path(model, base, mp, table)
    sweep = pareto_sweep(path)
    uniform_proxy = [
        {"avg_weight_bits": b, "score": sum(table.weight[n][b] for n in table.layers)} for b in (3, 4, 5, 6, 8)
    ]
    return {
        **run_header(__file__, loaded),
        "data": {
            "eval": data.describe(),
            "calibration": {
                "name": "fashion-mnist:train",
                "samples": args.calib,
                "sensitivity_images": args.sens_images,
            },
        },
        "settings": {
            "threads": resolve_threads(args.threads),
            "activations": f"uniform {ACT_BITS}-bit, {args.search} calibration",
            "mixed_precision": mp.to_dict() | {"budget": "varies"},
            "anchors": list(mp.anchors),
        },
        "variants": rows,
        "sensitivity": table.to_dict(),
        "pareto_proxy": {"greedy": sweep, "uniform": uniform_proxy},
    }


def render_markdown(result: dict) -> str:
    env, s = result["environment"], result["settings"]
    fp = result["variants"][0]
    lines = [
        f"# Mixed-precision weights on the demo model ({result['model']['name']})",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(env)}; torch threads {s['threads']} (shared machine: timings are upper bounds)",
        f"- **Data**: top-1 on {result['data']['eval']['name']} ({result['data']['eval']['samples']} seeded samples); "
        f"calibration {result['data']['calibration']['samples']} Fashion-MNIST train images, sensitivities on the "
        f"first {result['data']['calibration']['sensitivity_images']}",
        f"- **Activations**: {s['activations']} everywhere; weights symmetric per-channel uniform (MSE clipping)",
        f"- **Sensitivity**: model-output KL vs FP32 with one layer quantized, measured at {s['anchors']} bits, "
        "other widths interpolated through the layer-output error",
        f"- **Created**: {result['created']}",
        "",
        "| variant | avg weight bits | top-1 | Δ top-1 (pt) | agreement vs FP32 | plan search (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["variants"]:
        drop = f"{100 * (r['top1'] - fp['top1']):+.2f}"
        search = (
            f"{r['plan_search_seconds']:.1f} wall, {r['plan_search_cpu_seconds']:.1f} CPU ({r['sensitivity_cache']})"
            if "plan_search_seconds" in r
            else ""
        )
        lines.append(
            f"| {r['name']} | {r['avg_weight_bits']:.3f} | {100 * r['top1']:.2f}% | {drop} "
            f"| {100 * r['agreement']:.2f}% | {search} |"
        )
    mixed = [r for r in result["variants"] if r["kind"] == "mixed"]
    lines += ["", "Bits per layer of the mixed plans:", ""]
    for r in mixed:
        counts: dict[str, int] = {}
        for b in r["weight_bits"].values():
            counts[str(b)] = counts.get(str(b), 0) + 1
        lines.append(f"- {r['name']}: " + ", ".join(f"{n} layers at {b} bits" for b, n in sorted(counts.items())))
    lines += [
        "",
        "Plan search time: sensitivity (when the cache misses) + greedy allocation; the first plan "
        "starts from an empty cache. Calibration and evaluation of the quantized models are not included.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--calib", type=int, default=64, help="Fashion-MNIST train images for calibration")
    parser.add_argument("--sens-images", type=int, default=16, help="calibration images used for sensitivities")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--search", default="minmax", choices=SEARCHES, help="activation calibration (minmax: best W8A8 on the demo)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    markdown = render_markdown(result)
    atomic_write_json(args.out_dir / "mixed_demo.json", result)
    atomic_write_text(args.out_dir / "mixed_demo.md", markdown)
    title = (
        f"{result['model']['name']}: W mixed/uniform, A{ACT_BITS}; top-1 on {result['data']['eval']['samples']} "
        "Fashion-MNIST test images"
    )
    series = {
        kind: [r | {"top1": 100 * r["top1"]} for r in result["variants"] if r["kind"] == kind]
        for kind in ("uniform", "mixed")
    }
    plot_pareto(series, args.out_dir / "mixed_demo.png", y="top1", ylabel="top-1 (%)", title=title)
    plot_pareto(
        result["pareto_proxy"],
        args.out_dir / "mixed_demo_proxy.png",
        y="score",
        ylabel="proxy score (sum of per-layer KL)",
        title="greedy path vs uniform (proxy)",
        logy=True,
    )
    print(markdown)


if __name__ == "__main__":
    main()
