"""Token reducers side by side at matched *measured* latency on the demo model: top-1, agreement
with FP32, and latency in ONNX Runtime and OpenVINO at batch 1 and 16.

    .venv/bin/python benchmarks/bench_tokens.py --limit 1000 --budgets 0.5,0.6,0.7 --threads 2

Every method is a curve: one setting per block-FLOPs budget (fraction of the unreduced model's):
ToMe with a constant r (``flops_ratio``), the same with the last block for the class token only
(``tome-last``), ToMe with its schedule searched, EViT at blocks 3, 6, 9
with its keep rate fitted, prune-merge with its schedule searched, and prune-merge searched with
the last block for the class token only (``pm-last``). Schedules are searched on Fashion-MNIST
*train* images (``--search-images``, fidelity to FP32, no labels); accuracy is measured on the
seeded test sample. Every setting is exported to ONNX, checked against PyTorch on the first test
batch (ONNX Runtime), evaluated in ONNX Runtime, then all files are timed interleaved per runtime
and batch (p50, spread p90/p50), so latencies are compared side by side in this one process.

Matched latency, per runtime and batch, from measured points only (no interpolation): for every
setting on the ToMe frontier (constant, constant with the last block, or searched: the most
accurate ToMe at or under its latency), each other method's most accurate setting measured at or
under that latency (Δ top-1), and its fastest setting within 0.3 pt of that top-1 (speed-up). The
issue's done-when (#31): at equal OpenVINO latency (b1 and b16) +0.5 pt over the best ToMe, or
1.15x faster within 0.3 pt.

Writes tokens_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
from run_header import run_header

from vitslim.compress.tokens import (
    TokenMergeConfig,
    TokenPruneConfig,
    TokenReductionConfig,
    apply_token_reduction,
    estimate_flops,
)
from vitslim.compress.tokens.search import Scorer, fit_to_budget, search_with
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import EvalData, evaluate_onnx, load_eval_data
from vitslim.evaluate.interleaved import runtime_call, summarize, time_interleaved
from vitslim.evaluate.latency import resolve_threads
from vitslim.evaluate.openvino_runtime import execution_precision, ov_compile
from vitslim.export.onnx_export import export_onnx
from vitslim.export.validate import check_parity
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import LoadedModel, load_model
from vitslim.pipeline import StageContext
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 16)
RUNTIMES = ("onnxruntime", "openvino")


#: methods compared with the ToMe frontier, the new ones (the done-when's), and the ToMe settings of the frontier
METHODS = ("evit", "pm", "pm-last")
NEW = ("pm", "pm-last")
TOME = ("tome", "tome-last", "tome-search")
#: top-1 tolerance of "equal top-1" (points) and the done-when's thresholds
EQUAL_TOP1_PT, GAIN_PT, SPEEDUP = 0.3, 0.5, 1.15


def settings(loaded: LoadedModel, budgets: list[float], args: argparse.Namespace) -> list[tuple[str, object]]:
    """``(name, config or None)`` of every setting; searches run here, on train images."""
    model = loaded.model
    calib = StageContext(loaded, progress=False).calibration(args.search_images)
    score = Scorer(model, calib)
    out: list[tuple[str, object]] = [("fp32", None)]
    out.append(("fp32-lastblock", TokenMergeConfig(r=0, class_token_last_block=True)))

    def searched(method: str, budget: float, last: bool = False) -> TokenReductionConfig:
        return search_with(score, method, budget, args.search_evals, last, None).best.config

    for b in budgets:
        evit = fit_to_budget(model, lambda s: TokenPruneConfig(keep_rate=max(round(s, 3), 0.001)), b)
        out += [
            (f"tome-{b:g}", TokenMergeConfig(flops_ratio=b)),
            (f"tome-last-{b:g}", TokenMergeConfig(flops_ratio=b, class_token_last_block=True)),
            (f"tome-search-{b:g}", searched("tome", b)),
            (f"evit-{b:g}", evit),
            (f"pm-{b:g}", searched("prunemerge", b)),
            (f"pm-last-{b:g}", searched("prunemerge", b, last=True)),
        ]
        print(*(f"{n}: {c.describe()}" for n, c in out[-6:]), sep="\n", flush=True)
    return out


def method_of(name: str) -> str:
    """``tome-search-0.6`` -> ``tome-search``; ``fp32`` -> ``fp32``."""
    head, _, tail = name.rpartition("-")
    return head if head and tail.replace(".", "").isdigit() else name


def matched(rows: list[dict], key: str) -> list[dict]:
    """Per ToMe frontier point at ``key`` (``runtime|batch``): each method's most accurate setting at or
    under its latency and its fastest setting within :data:`EQUAL_TOP1_PT` of its top-1."""
    lat = {r["name"]: r["latency"][key]["p50_ms"] for r in rows}
    top1 = {r["name"]: 100 * r["top1"] for r in rows}
    tome = [r["name"] for r in rows if method_of(r["name"]) in TOME]
    frontier = [n for n in tome if top1[n] >= max(top1[m] for m in tome if lat[m] <= lat[n])]
    out = []
    for ref in sorted(frontier, key=lat.get):
        entry = {"tome": ref, "latency_ms": lat[ref], "top1": top1[ref], "methods": {}}
        for method in METHODS:
            names = [r["name"] for r in rows if method_of(r["name"]) == method]
            faster = [n for n in names if lat[n] <= lat[ref]]
            best = max(faster, key=top1.get, default=None)
            close = [n for n in names if top1[n] >= top1[ref] - EQUAL_TOP1_PT]
            quick = min(close, key=lat.get, default=None)
            entry["methods"][method] = {
                "at_equal_latency": best,
                "gain_pt": None if best is None else top1[best] - top1[ref],
                "at_equal_top1": quick,
                "speedup": None if quick is None else lat[ref] / lat[quick],
            }
        out.append(entry)
    return out


def done_when(table: list[dict]) -> bool:
    """Whether a new method (:data:`NEW`) beats some ToMe frontier point by the issue's margin."""
    return any(
        (m["gain_pt"] or -1) >= GAIN_PT or (m["speedup"] or 0) >= SPEEDUP
        for entry in table
        for name, m in entry["methods"].items()
        if name in NEW
    )


def measure(
    name: str, cfg: TokenReductionConfig | None, loaded: LoadedModel, data: EvalData, folder: Path, threads: int
) -> tuple[dict, Path]:
    """Export one setting, check it against PyTorch and evaluate it in ONNX Runtime (scored later)."""
    model = loaded.model if cfg is None else apply_token_reduction(copy.deepcopy(loaded.model), cfg)
    path = export_onnx(model, folder / f"{name}.onnx", loaded.input_size)
    parity = check_parity(model, path, next(iter(data.batches))[0], threads=resolve_threads(threads))
    flops = estimate_flops(model)
    row = {
        "name": name,
        "description": "uncompressed model" if cfg is None else cfg.describe(),
        "config": None if cfg is None else cfg.to_dict(),
        "tokens_per_layer": flops["tokens_per_layer"],
        "block_flops_per_image": flops["total_flops"],
        "flops_ratio": flops["ratio"],
        "onnx_max_abs_diff_vs_pytorch": parity.max_abs_diff,
        "outputs": evaluate_onnx(path, data, threads, progress=False),
    }
    return row, path


def time_all(rows: list[dict], paths: list[Path], size: tuple, args: argparse.Namespace) -> None:
    """Interleaved p50 latency per runtime and batch for every row (written into the rows)."""
    for runtime in RUNTIMES:
        for batch in BATCH_SIZES:
            x = np.random.default_rng(0).standard_normal((batch, *size), dtype=np.float32)
            calls = {row["name"]: runtime_call(p, runtime, args.threads, x) for row, p in zip(rows, paths, strict=True)}
            times = time_interleaved(calls, rounds=args.rounds, calls=3 if batch == 1 else 1, progress=False)
            for row in rows:
                row.setdefault("latency", {})[f"{runtime}|{batch}"] = summarize(times[row["name"]])
    base = rows[0]["latency"]
    for row in rows:
        row["speedup"] = {k: base[k]["p50_ms"] / v["p50_ms"] for k, v in row["latency"].items()}


def run(loaded: LoadedModel, data: EvalData, budgets: list[float], args: argparse.Namespace) -> list[dict]:
    classifier = loaded.num_classes > 0
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in settings(loaded, budgets, args):
            row, path = measure(name, cfg, loaded, data, Path(tmp), args.threads)
            rows.append(row)
            paths.append(path)
            print(f"{name}: evaluated", flush=True)
        reference = rows[0]["outputs"]
        for row in rows:
            row.update(score(row.pop("outputs"), reference, classifier))
        time_all(rows, paths, loaded.input_size, args)
        rows[0]["openvino_precision"] = execution_precision(ov_compile(paths[0], args.threads, batch=1))
    return rows


def matched_tables(rows: list[dict]) -> dict[str, list[dict]]:
    return {f"{rt}|{b}": matched(rows, f"{rt}|{b}") for rt in RUNTIMES for b in BATCH_SIZES}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _lat(row: dict, key: str) -> str:
    lat = row["latency"][key]
    return f"{lat['p50_ms']:.1f} ({lat['p90_ms'] / lat['p50_ms']:.2f}) {row['speedup'][key]:.2f}x"


def render_markdown(result: dict) -> str:
    env, data, bench = result["environment"], result["data"], result["benchmark"]
    rows = result["variants"]
    base_top1 = rows[0]["top1"]
    keys = [f"{rt}|{b}" for rt in RUNTIMES for b in BATCH_SIZES]
    lines = [
        f"# Token reducers at matched measured latency ({result['model']['name']})",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(env)}",
        f"- **Latency**: ONNX Runtime and OpenVINO ({rows[0]['openvino_precision']} execution) CPU, "
        f"{bench['threads']} threads, random inputs, all files timed interleaved per runtime and batch, "
        f"{bench['rounds']} rounds (3 calls per round at batch 1); p50 ms (p90/p50) and speedup vs fp32",
        f"- **Data**: {data['name']}, {data['samples']} test samples (seed 0), evaluated in ONNX Runtime; schedules "
        f"searched on {bench['search_images']} train images, {bench['search_evals']} candidates per search",
        f"- **Created**: {result['created']}",
        "",
        "| variant | setting | block FLOPs | top-1 | Δ pt | agreement | "
        + " | ".join(k.replace("|", " b") for k in keys)
        + " | ONNX vs PyTorch |",
        "|" + "---|" * (7 + len(keys)),
    ]
    for row in rows:
        drop = "n/a" if row["top1"] is None else f"{100 * (row['top1'] - base_top1):+.2f}"
        lines.append(
            f"| {row['name']} | {row['description']} | {row['flops_ratio']:.3f} | {_pct(row['top1'])} | {drop} "
            f"| {_pct(row['agreement'])} | "
            + " | ".join(_lat(row, k) for k in keys)
            + f" | {row['onnx_max_abs_diff_vs_pytorch']:.1e} |"
        )
    lines += [
        "",
        "Block FLOPs: attention and MLP of the transformer blocks on the tokens each block sees, reduction "
        "overhead included, as a fraction of fp32's (patch embedding and head excluded).",
        "",
        "## At matched measured latency",
        "",
        f"Per ToMe frontier setting: each method's most accurate setting measured at or under its latency "
        f"(Δ top-1, pt) and its fastest setting within {EQUAL_TOP1_PT} pt of its top-1 (speed-up); '-': none.",
        "",
    ]
    for key, table in result["matched"].items():
        runtime, batch = key.split("|")
        lines += [
            f"**{runtime} b{batch}** (done-when met: {'yes' if done_when(table) else 'no'})",
            "",
            "| ToMe setting | ms | top-1 | " + " | ".join(f"{m}: Δ pt at ≤ ms | {m}: speed-up" for m in METHODS) + " |",
            "|" + "---|" * (3 + 2 * len(METHODS)),
        ]
        for entry in table:
            cells = []
            for m in METHODS:
                got = entry["methods"][m]
                gain = "-" if got["gain_pt"] is None else f"{got['gain_pt']:+.2f} ({got['at_equal_latency']})"
                fast = "-" if got["speedup"] is None else f"{got['speedup']:.2f}x ({got['at_equal_top1']})"
                cells += [gain, fast]
            lines.append(
                f"| {entry['tome']} | {entry['latency_ms']:.1f} | {entry['top1']:.2f}% | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--budgets", default="0.5,0.6,0.7", help="block FLOPs budgets, comma-separated")
    parser.add_argument("--search-images", type=int, default=64, help="train images for the schedule searches")
    parser.add_argument("--search-evals", type=int, default=12, help="candidates scored per search")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    budgets = [float(b) for b in args.budgets.split(",")]
    result = {
        **run_header(__file__, loaded),
        "data": data.describe(),
        "benchmark": {
            "runtimes": list(RUNTIMES),
            "threads": resolve_threads(args.threads),
            "batch_sizes": list(BATCH_SIZES),
            "rounds": args.rounds,
            "budgets": budgets,
            "search_images": args.search_images,
            "search_evals": args.search_evals,
            "inputs": "random normal",
            "accuracy_evaluated_with": "onnxruntime",
        },
        "variants": run(loaded, data, budgets, args),
    }
    result["matched"] = matched_tables(result["variants"])
    markdown = render_markdown(result)
    atomic_write_json(args.out_dir / "tokens_demo.json", result)
    atomic_write_text(args.out_dir / "tokens_demo.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
