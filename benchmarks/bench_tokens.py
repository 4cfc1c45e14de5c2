"""Token reduction on the demo model: top-1, agreement with FP32, FLOPs and ONNX Runtime speedup.

    .venv/bin/python benchmarks/bench_tokens.py --limit 2000 --threads 2

For FP32 and a sweep of ToMe merging (constant r, decreasing schedules) and EViT pruning
settings: export each model to ONNX, check it against PyTorch on the first batch of real
images, evaluate it in ONNX Runtime on the seeded Fashion-MNIST test sample (top-1, agreement
with FP32's ONNX outputs), count the blocks' FLOPs and time ONNX Runtime at batch 1 and 16.
Speedups are ratios of p50 latencies against FP32 measured in this one process.

Writes tokens_demo.{json,md,png} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from run_header import run_header

from vitslim.compress.tokens import (
    TokenMergeConfig,
    TokenPruneConfig,
    TokenReductionConfig,
    apply_token_reduction,
    estimate_flops,
)
from vitslim.evaluate.latency import DEFAULT_WARMUP, bench_ort, resolve_threads
from vitslim.export.onnx_export import DEFAULT_OPSET, export_onnx
from vitslim.export.validate import check_parity
from vitslim.files import atomic_write_json, atomic_write_text, ensure_parent_dir
from vitslim.measure import EvalData, evaluate_onnx, load_eval_data, score
from vitslim.models import LoadedModel, load_model
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 16)
SWEEP: list[tuple[str, TokenReductionConfig | None]] = [
    ("fp32", None),
    *[(f"tome-r{r}", TokenMergeConfig(r=r)) for r in (4, 8, 12, 16)],
    *[(f"tome-r{r}-decreasing", TokenMergeConfig(r=r, schedule="decreasing")) for r in (8, 16)],
    *[(f"evit-{keep}", TokenPruneConfig(keep_rate=keep, layers=(3, 6, 9))) for keep in (0.7, 0.5)],
]


def measure(
    name: str, cfg: TokenReductionConfig | None, loaded: LoadedModel, data: EvalData, folder: Path, threads: int
) -> tuple[dict, Path]:
    """Export one setting, check it against PyTorch and evaluate it in ONNX Runtime (scored later)."""
    model = loaded.model if cfg is None else apply_token_reduction(copy.deepcopy(loaded.model), cfg)
    path = export_onnx(model, folder / f"{name}.onnx", loaded.input_size)
    images, _ = next(iter(data.batches))
    parity = check_parity(model, path, images, threads=resolve_threads(threads))
    flops = estimate_flops(model)
    row = {
        "name": name,
        "description": "uncompressed model" if cfg is None else cfg.describe(),
        "config": None if cfg is None else cfg.to_dict(),
        "tokens_per_layer": flops["tokens_per_layer"],
        "block_flops_per_image": flops["total_flops"],
        "flops_ratio": flops["ratio"],
        "onnx": {
            "opset": DEFAULT_OPSET,
            "size_bytes": path.stat().st_size,
            "max_abs_diff_vs_pytorch": parity.max_abs_diff,
            "top1_agreement_vs_pytorch": parity.top1_agreement,
            "samples": parity.samples,
        },
        "outputs": evaluate_onnx(path, data, threads),
    }
    return row, path


def run_sweep(loaded: LoadedModel, data: EvalData, threads: int, warmup: int, runs: int) -> list[dict]:
    """Every setting of SWEEP: accuracy and FLOPs first, then all timings back to back."""
    classifier = loaded.num_classes > 0
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in SWEEP:
            row, path = measure(name, cfg, loaded, data, Path(tmp), threads)
            rows.append(row)
            paths.append(path)
        reference = rows[0]["outputs"]
        for row, path in zip(rows, paths, strict=True):
            row.update(score(row.pop("outputs"), reference, classifier))
            latency = bench_ort(str(path), loaded.input_size, list(BATCH_SIZES), threads, warmup=warmup, runs=runs)
            row["latency"] = [entry.to_dict() for entry in latency]
    base = {lat["batch"]: lat["p50_ms"] for lat in rows[0]["latency"]}
    for row in rows:
        row["speedup"] = {str(lat["batch"]): base[lat["batch"]] / lat["p50_ms"] for lat in row["latency"]}
    return rows


def _p50(row: dict, batch: int) -> float:
    return next(lat["p50_ms"] for lat in row["latency"] if lat["batch"] == batch)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def render_markdown(result: dict) -> str:
    env, data, bench = result["environment"], result["data"], result["benchmark"]
    base_top1 = result["variants"][0]["top1"]
    depth = len(result["variants"][0]["tokens_per_layer"]) - 1
    lines = [
        f"# Token reduction on the demo model ({result['model']['name']})",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(env)}",
        f"- **Runtime**: ONNX Runtime CPU, {bench['threads']} threads, random inputs, "
        f"{bench['warmup']} warm-up + up to {bench['runs']} timed runs per setting (p50)",
        f"- **Data**: {data['name']}, {data['samples']} samples (seed 0); top-1 and agreement with FP32 "
        "evaluated in ONNX Runtime",
        f"- **Created**: {result['created']}",
        "",
        "| variant | setting | top-1 | Δ top-1 (pt) | agreement vs FP32 | tokens after last block "
        "| block GFLOPs | FLOPs ratio | p50 ms b1 | speedup b1 | p50 ms b16 | speedup b16 | ONNX vs PyTorch max diff |",
        "|" + "---|" * 13,
    ]
    for row in result["variants"]:
        drop = "n/a" if row["top1"] is None or base_top1 is None else f"{100 * (row['top1'] - base_top1):+.2f}"
        lines.append(
            f"| {row['name']} | {row['description']} | {_pct(row['top1'])} | {drop} | {_pct(row['agreement'])} "
            f"| {row['tokens_per_layer'][-1]} | {row['block_flops_per_image'] / 1e9:.2f} | {row['flops_ratio']:.2f} "
            f"| {_p50(row, 1):.1f} | {row['speedup']['1']:.2f}x | {_p50(row, 16):.1f} | {row['speedup']['16']:.2f}x "
            f"| {row['onnx']['max_abs_diff_vs_pytorch']:.1e} |"
        )
    lines += [
        "",
        f"Block FLOPs: attention and MLP of the {depth} transformer blocks on the tokens each "
        "block sees, "
        "merge/prune overhead included (patch embedding and head excluded). Speedups: FP32 p50 / variant p50, "
        "same runtime, batch and threads, measured in the same run. ONNX vs PyTorch: the first batch of real "
        "images through both.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Top-1 against ONNX Runtime speedup at batch 16, labelled with what was measured where."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, data, bench = result["environment"], result["data"], result["benchmark"]
    rows = [r for r in result["variants"] if r["top1"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for family, marker in (("fp32", "s"), ("tome", "o"), ("evit", "^")):
        group = [r for r in rows if r["name"].startswith(family)]
        ax.scatter([r["speedup"]["16"] for r in group], [100 * r["top1"] for r in group], marker=marker, label=family)
        for i, r in enumerate(group):  # alternate label sides so neighbours do not overlap
            xy = (r["speedup"]["16"], 100 * r["top1"])
            ax.annotate(r["name"], xy, textcoords="offset points", xytext=(4, 4 if i % 2 == 0 else -11), fontsize=7)
    if rows and rows[0]["name"] == "fp32":
        ax.axhline(100 * rows[0]["top1"] - 1.0, color="grey", linestyle="--", linewidth=0.8, label="FP32 − 1 pt")
    ax.set_xlabel("ONNX Runtime speedup vs FP32 at batch 16 (p50 ratio)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(
        f"{result['model']['name']}: ONNX Runtime CPU, {env['cpu']}, batch 16, {bench['threads']} threads\n"
        f"top-1 on {data['name']}, {data['samples']} samples, evaluated in ONNX Runtime",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ensure_parent_dir(path), dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per setting and batch size")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
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
            "accuracy_evaluated_with": "onnxruntime",
        },
        "variants": run_sweep(loaded, data, args.threads, args.warmup, args.runs),
    }
    markdown = render_markdown(result)
    atomic_write_json(args.out_dir / "tokens_demo.json", result)
    atomic_write_text(args.out_dir / "tokens_demo.md", markdown)
    plot(result, args.out_dir / "tokens_demo.png")
    print(markdown)


if __name__ == "__main__":
    main()
