"""Low-bit files on the demo model: int4 weights and FP8 E4M3 against int8 and fp32.

    .venv/bin/python benchmarks/bench_lowbit.py --limit 1000 --threads 2

Variants, each built by its built-in recipe on the demo's calibration images and exported the way a
compress run exports it (:func:`vitslim.export.variant.export_variant`):

* ``fp32``: the FP32 export (the reference for size ratios, agreement and speed-ups);
* ``w8a8``: int8 weights and activations (the ``w8a8`` recipe);
* ``mixed-4.5bit``: weights at 4 or 8 bits per layer (4.5 on average), int4-stored where 4-bit;
* ``w4a16``: weight-only 4-bit (int4 in the file), activations float;
* ``fp8``: FP8 E4M3 weights and activations (float8e4m3fn Q/DQ).

For each: file size (and its ratio to fp32), what the weights are stored in, top-1 on the seeded
Fashion-MNIST test sample in ONNX Runtime and OpenVINO, their parity with the variant's PyTorch
model (top-1 agreement, judged as the ``validate`` stage judges: 99%, or not significantly under
PyTorch's own noise floor) and p50 latency at batch 1 and 16 in both runtimes, every file timed
interleaved with the others (:func:`vitslim.runtimes.timing.time_variants`); a speed-up or
slow-down against fp32 is claimed only when the paired rounds agree (:mod:`vitslim.evaluate.speedup`).

Writes lowbit_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from run_header import run_header

from vitslim.evaluate.accuracy import Outputs, score
from vitslim.evaluate.data import EvalData, evaluate_onnx, evaluate_torch, load_eval_data
from vitslim.evaluate.latency import resolve_threads
from vitslim.evaluate.parity import noise_floor
from vitslim.evaluate.speedup import speedup
from vitslim.export.validate import ValidateStage, judge
from vitslim.export.variant import export_variant
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import LoadedModel, load_model
from vitslim.pipeline.context import StageContext
from vitslim.pipeline.variants import build_variants
from vitslim.recipes import load_recipe
from vitslim.report.markdown import device_line
from vitslim.runtimes import RUNTIMES, Deployed

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("w8a8", "mixed-4.5bit", "w4a16", "fp8")
RUNTIME_NAMES = ("onnxruntime", "openvino")
BATCH_SIZES = (1, 16)


def storage(info: dict) -> dict[str, int]:
    """Weight sites per stored type (int4, int8, float8e4m3fn ...) of a Q/DQ export."""
    counts: dict[str, int] = {}
    for row in info.get("precision", {}).values():
        if row["kind"] == "weight" and row["onnx_type"]:
            counts[row["onnx_type"]] = counts.get(row["onnx_type"], 0) + 1
    return counts


def parity(model: torch.nn.Module, data: EvalData, torch_out: Outputs, files: dict[str, Outputs], threads: int) -> dict:
    """Top-1 agreement of each runtime's outputs with PyTorch's, judged like the validate stage."""
    records = {
        rt: {"top1_agreement": score(out, torch_out, True)["agreement"], "samples": len(out.labels)}
        for rt, out in files.items()
    }
    verdicts = judge(records, ValidateStage(), lambda: noise_floor(model, data, torch_out, threads, False))
    return {
        rt: {**records[rt], "passed": not v.reasons, "reasons": v.reasons, "noise_floor": v.floor}
        for rt, v in verdicts.items()
    }


def measure(name: str, model: torch.nn.Module, path: Path, info: dict, data: EvalData, threads: int) -> dict:
    torch_out = evaluate_torch(model, data, threads, progress=False)
    outs = {"onnxruntime": evaluate_onnx(path, data, threads, progress=False)}
    outs["openvino"] = RUNTIMES["openvino"].evaluate_file(path, data, threads, progress=False)[1]
    return {
        "name": name,
        "file": path.name,
        "bytes": path.stat().st_size,
        "opset": info.get("opset"),
        "storage": storage(info),
        "notes": info.get("notes", []),
        "top1": {"pytorch": score(torch_out, None, True)["top1"]}
        | {rt: score(o, None, True)["top1"] for rt, o in outs.items()},
        "parity": parity(model, data, torch_out, outs, threads),
        "outputs": outs,
    }


def run(loaded: LoadedModel, data: EvalData, args: argparse.Namespace, folder: Path) -> list[dict]:
    threads = resolve_threads(args.threads)
    size = tuple(loaded.data_config["input_size"])
    ctx = StageContext(loaded, progress=False)
    rows = []
    path, opset, info = export_variant(loaded.model, folder / "fp32.onnx", size)
    rows.append(measure("fp32", loaded.model, path, {**info, "opset": opset}, data, threads))
    for recipe in args.recipes:
        start = time.perf_counter()
        model = build_variants(loaded.model, load_recipe(recipe), ctx)[-1].model.eval()
        built = time.perf_counter() - start
        path, opset, info = export_variant(model, folder / f"{recipe}.onnx", size)
        rows.append(measure(recipe, model, path, {**info, "opset": opset}, data, threads) | {"build_s": built})
        print(f"{recipe}: built in {built:.0f} s, {rows[-1]['bytes'] / 1e6:.1f} MB", flush=True)
    deployed = [Deployed(r["name"], None, folder / r["file"], size, torch.device("cpu")) for r in rows]
    print(f"timing {len(deployed)} files", flush=True)
    latency = time_all(deployed, threads, args.runs)
    fp32 = rows[0]
    for row in rows:
        row["latency"] = latency[row["name"]]
        row["ratio"] = row["bytes"] / fp32["bytes"]
        row["agreement_fp32"] = {
            rt: score(row["outputs"][rt], fp32["outputs"][rt], True)["agreement"] for rt in RUNTIME_NAMES
        }
        row["speedup"] = {
            f"{e['runtime']}-b{e['batch']}": speedup(base, e).__dict__ | {"text": speedup(base, e).text(e["batch"])}
            for e, base in zip(row["latency"], fp32["latency"], strict=True)
        }
    for row in rows:
        del row["outputs"]
    return rows


def time_all(deployed: list[Deployed], threads: int, runs: int) -> dict[str, list[dict]]:
    from vitslim.runtimes.timing import time_variants

    timed = time_variants(deployed, RUNTIME_NAMES, BATCH_SIZES, threads, warmup=3, runs=runs, progress=False)
    # the default modes only (OpenVINO's extra f32 mode is timed for baselines alone)
    return {name: [e.to_dict() for e in entries if not e.to_dict().get("mode")] for name, entries in timed.items()}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def render_markdown(result: dict) -> str:
    h = result["header"]
    lines = [
        "# Low-bit files on the demo model (int4, int8, fp8)",
        "",
        f"- **Command**: `{h['command']}`",
        f"- **Machine**: {device_line(h['environment'])}; load average before the run {result['load_before']}, "
        f"after {result['load_after']}",
        f"- **Data**: top-1 on {result['data']}; calibration: each recipe's own Fashion-MNIST train images",
        f"- **Created**: {h['created']}",
        "",
        "| variant | weights stored | size MB | vs fp32 | top-1 ORT | top-1 OV | parity ORT | parity OV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        stored = ", ".join(f"{n} {t}" for t, n in sorted(r["storage"].items())) or "fp32"
        par = [
            f"{_pct(r['parity'][rt]['top1_agreement'])} {'pass' if r['parity'][rt]['passed'] else 'FAIL'}"
            for rt in RUNTIME_NAMES
        ]
        lines.append(
            f"| {r['name']} | {stored} | {r['bytes'] / 1e6:.1f} | {r['ratio']:.3f}x | {_pct(r['top1']['onnxruntime'])} "
            f"| {_pct(r['top1']['openvino'])} | {par[0]} | {par[1]} |"
        )
    lines += [
        "",
        "Latency (p50 ms, timed interleaved; speed-up against fp32 in the same runtime and batch, "
        "claimed only when the paired rounds agree):",
        "",
        "| variant | " + " | ".join(f"{rt} b{b}" for rt in RUNTIME_NAMES for b in BATCH_SIZES) + " |",
        "|---|" + "---|" * (len(RUNTIME_NAMES) * len(BATCH_SIZES)),
    ]
    for r in result["rows"]:
        cells = []
        for e in r["latency"]:
            s = r["speedup"][f"{e['runtime']}-b{e['batch']}"]
            cells.append(f"{e['p50_ms']:.1f} ({s['text']})" if r["name"] != "fp32" else f"{e['p50_ms']:.1f}")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    ran = sorted({f"{e['runtime']} b{e['batch']}: {e['device']}" for r in result["rows"] for e in r["latency"]})
    lines += [
        "",
        f"Where they ran (default precision of each runtime): {'; '.join(ran)}.",
        "",
        "Notes of the exports:",
        "",
    ]
    for r in result["rows"]:
        for note in r["notes"]:
            lines.append(f"- {r['name']}: {note}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per file, runtime and batch size")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(resolve_threads(args.threads))
    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as folder:
        rows = run(loaded, data, args, Path(folder))
    result = {
        "header": run_header(__file__, loaded),
        "data": f"fashion-mnist:test ({args.limit} seeded samples)",
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rows": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "lowbit_demo.json", result)
    atomic_write_text(args.out_dir / "lowbit_demo.md", render_markdown(result))
    print(render_markdown(result))


if __name__ == "__main__":
    main()
