"""8-bit against 7-bit weights on the demo model, on the CPU that runs the files.

    .venv/bin/python benchmarks/bench_int8_isa.py build --limit 200 --folder /tmp/int8_isa
    .venv/bin/python benchmarks/bench_int8_isa.py evaluate --folder /tmp/int8_isa

``build`` (on any CPU) makes the ``w8a8`` and ``cpu`` recipes twice, as ``vitslim compress`` builds
them, with ``reduce_range`` off (8-bit weights) and on (7-bit weights), exports each (ONNX, and
OpenVINO IR), and stores PyTorch's outputs on the seeded Fashion-MNIST test images. ``evaluate``
runs every file on the same images on *this* CPU (``--runs``): ONNX Runtime with its int8
kernels, with its reference kernels (``reference``: graph optimisations off), and OpenVINO with the
f32 hint; top-1, and agreement and max abs difference against PyTorch (a quantized model moves
a value that sits on a rounding boundary by a whole step under float noise: even reference kernels
agree to about 99% on this model, which is why the validate stage compares with PyTorch's own
noise floor). On an x86 CPU without VNNI the int8 kernels saturate with 8-bit weights; to see
that on another CPU, run ``evaluate`` under ``VITSLIM_CPU_FLAGS=avx2 qemu-x86_64 -cpu EPYC-v1``
(QEMU's user mode emulates an AVX2-only CPU's instruction set; its timings mean nothing, so none are taken).

Writes int8_isa_<isa>.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import torch
from run_header import run_header

from vitslim.evaluate.accuracy import Outputs, collect_outputs, ort_runner, topk_accuracy
from vitslim.evaluate.data import evaluate_torch, load_eval_data
from vitslim.evaluate.environment import environment, int8_saturates
from vitslim.evaluate.openvino_runtime import ov_runner
from vitslim.export.openvino_ir import save_openvino_ir
from vitslim.export.validate import parity_of
from vitslim.export.variant import export_variant
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import load_model
from vitslim.pipeline import StageContext, build_variants
from vitslim.recipes import load_recipe

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("w8a8", "cpu")
WEIGHTS = {"8-bit": False, "7-bit": True}  # reduce_range off / on
FILES = [f"{recipe}-{weights}" for recipe in RECIPES for weights in WEIGHTS]


def build(args: argparse.Namespace) -> None:
    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, 0, 32)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = torch.cat([x for x, _ in data.batches])
    labels = torch.cat([y for _, y in data.batches])
    files = []
    for recipe in RECIPES:
        for weights, reduce in WEIGHTS.items():
            ctx = StageContext(loaded, seed=0, progress=False, int8_saturates=reduce)
            model = build_variants(loaded.model, load_recipe(recipe), ctx)[-1].model
            name = f"{recipe}-{weights}"
            onnx_path, _, _ = export_variant(model, folder / f"{name}.onnx", loaded.input_size)
            save_openvino_ir(onnx_path, folder / f"{name}.xml")
            logits = evaluate_torch(model, data, threads=args.threads, progress=False).logits
            torch.save(logits, folder / f"{name}.pytorch.pt")
            files.append({"name": name, "recipe": recipe, "weights": weights})
    torch.save({"images": images, "labels": labels}, folder / "data.pt")
    header = run_header(__file__, loaded)
    (folder / "built.json").write_text(json.dumps({"files": files, "built": header}, indent=1))


def _row(name: str, runtime: str, outputs: Outputs, reference: torch.Tensor) -> dict[str, Any]:
    parity = parity_of(reference, outputs.logits, classifier=True)
    return {
        "file": name,
        "runtime": runtime,
        "top1": topk_accuracy(outputs, 1),
        "pytorch_top1": topk_accuracy(Outputs(reference, outputs.labels), 1),
        "agreement": parity["top1_agreement"],
        "max_abs_diff": parity["max_abs_diff"],
    }


def _runner(stem: Path, runtime: str, threads: int):
    if runtime == "openvino":
        return ov_runner(stem.with_suffix(".xml"), threads, "f32")
    return ort_runner(str(stem.with_suffix(".onnx")), threads, optimize=runtime != "reference")


def evaluate(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    built = json.loads((folder / "built.json").read_text())
    data = torch.load(folder / "data.pt", weights_only=True)
    n = args.limit or len(data["labels"])
    images, labels = data["images"][:n], data["labels"][:n]
    batches = list(zip(images.split(args.batch), labels.split(args.batch), strict=True))
    rows = []
    for run in args.runs.split(","):
        name, runtime = run.split(":")
        reference = torch.load(folder / f"{name}.pytorch.pt", weights_only=True)[:n]
        runner = _runner(folder / name, runtime, args.threads)
        outputs = collect_outputs(runner, batches, desc=f"{name} {runtime}", progress=False)
        rows.append(_row(name, runtime, outputs, reference))
        print(json.dumps(rows[-1]), flush=True)
    header = {
        "command": " ".join(["python", "benchmarks/bench_int8_isa.py", *sys.argv[1:]]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": built["built"]["model"],
        "environment": environment(),
        "built": built["built"]["environment"]["cpu"],
    }
    result = {**header, "images": n, "int8_saturates": int8_saturates(), "rows": rows}
    isa = "no-vnni" if int8_saturates() else "vnni"
    out = Path(args.out_dir)
    atomic_write_json(out / f"int8_isa_{isa}.json", result)
    atomic_write_text(out / f"int8_isa_{isa}.md", render(result))


def render(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# 8-bit vs 7-bit weights, {'no VNNI' if result['int8_saturates'] else 'VNNI'}",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **CPU**: {env['cpu']}, flags {' '.join(env['cpu_flags']) or 'none'}",
        f"- **Images**: {result['images']} Fashion-MNIST test images (seed 0); files built on {result['built']}",
        "",
        "| file | runtime | top-1 | PyTorch top-1 | agreement | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['file']} | {r['runtime']} | {100 * r['top1']:.1f}% | {100 * r['pytorch_top1']:.1f}% | "
            f"{100 * r['agreement']:.1f}% | {r['max_abs_diff']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build")
    b.add_argument("--limit", type=int, default=200)
    b.add_argument("--folder", required=True)
    b.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("evaluate")
    e.add_argument("--folder", required=True)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--batch", type=int, default=8)
    e.add_argument("--limit", type=int, default=0, help="the first N stored images (0: all)")
    every = ",".join(f"{f}:{r}" for f in FILES for r in ("onnxruntime", "reference", "openvino"))
    help_runs = "FILE:RUNTIME pairs; reference: ONNX Runtime, graph optimisations off; openvino: the f32 hint"
    e.add_argument("--runs", default=every, help=help_runs)
    e.add_argument("--out-dir", default=str(RESULTS))
    r = sub.add_parser("render", help="rewrite the Markdown of a results JSON")
    r.add_argument("json")
    args = parser.parse_args()
    if args.step == "render":
        path = Path(args.json)
        atomic_write_text(path.with_suffix(".md"), render(json.loads(path.read_text())))
        return
    (build if args.step == "build" else evaluate)(args)


if __name__ == "__main__":
    main()
