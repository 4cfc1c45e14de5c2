"""TensorRT-shaped INT8 on the demo model: our ``w8a8-trt`` export side by side with NVIDIA Model
Optimizer's ONNX quantizer.

    .venv/bin/python benchmarks/bench_trt.py --limit 1000 --calib 32 \\
        --modelopt-python /path/to/venv-with-modelopt/bin/python

Variants, each an ONNX file run by ONNX Runtime (CPU EP) on the same seeded Fashion-MNIST test images:

* ``fp32``: the FP32 export (Model Optimizer's input);
* ``w8a8-trt``: ``quantize_`` with the ``w8a8-trt`` preset (minmax ranges, GPTQ weights, 8-bit
  weights: no reduced range) on the calibration images, exported by ``export_quantized_onnx``;
* ``modelopt-int8``: ``python -m modelopt.onnx.quantization --quantize_mode int8`` on the FP32 file
  with its default calibration (entropy) on the same calibration images, the rest of the graph kept
  FP32 (``--high_precision_dtype fp32``: its default converts it to FP16, which a CPU comparison
  should not mix in);
* ``modelopt-int8-no-residual``: the same with ``--op_types_to_exclude Add LayerNormalization``
  (no Q/DQ on the residual adds and LayerNorm inputs: the placement ours has), to measure what those cost.

Model Optimizer pins other onnx versions than vitslim, so it runs in its own interpreter
(``--modelopt-python``). Accuracy is measured with ONNX Runtime's graph optimisations off (its
reference kernels: Q/DQ computed as written), so the figures are the graphs' own arithmetic and not
this CPU's int8 kernels (without VNNI they saturate u8/s8 pair sums). For each file: top-1 and
agreement with FP32, which Conv/MatMul/Gemm layers read Q/DQ on both inputs, what each activation
Q/DQ feeds, and the TensorRT readiness findings (``vitslim.export.tensorrt_readiness``).

Writes trt_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from bench_export import calibration_batches
from run_header import run_header

from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import evaluate_onnx, load_eval_data
from vitslim.export.onnx_export import export_onnx
from vitslim.export.qdq import export_quantized_onnx
from vitslim.export.tensorrt_readiness import tensorrt_readiness
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import load_model
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
LINEAR_OPS = ("Conv", "MatMul", "Gemm")


def modelopt_quantize(python: str, fp32: Path, calib: Path, out: Path, exclude: list[str]) -> float:
    """Model Optimizer's INT8 ONNX quantization of ``fp32`` (seconds taken)."""
    cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(fp32), "--quantize_mode", "int8"]
    cmd += ["--calibration_data_path", str(calib), "--calibration_eps", "cpu", "--high_precision_dtype", "fp32"]
    cmd += ["--output_path", str(out)] + (["--op_types_to_exclude", *exclude] if exclude else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"Model Optimizer failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _weight_shape(model: onnx.ModelProto, producers: dict, name: str) -> tuple[int, ...] | None:
    inits = {t.name: t for t in model.graph.initializer}
    while name not in inits:
        node = producers.get(name)
        if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            return None
        name = node.input[0]
    return tuple(inits[name].dims)


def placement(path: Path) -> dict:
    """Per weight shape of a Conv/MatMul/Gemm: how many read Q/DQ on both inputs, of how many; what
    each activation QuantizeLinear's DequantizeLinear feeds; the TensorRT readiness."""
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    linears: dict[str, list[int]] = {}
    for n in model.graph.node:
        shape = _weight_shape(model, producers, n.input[1]) if n.op_type in LINEAR_OPS and len(n.input) > 1 else None
        if shape is None:
            continue
        role = f"{n.op_type} {'x'.join(map(str, shape))}"
        row = linears.setdefault(role, [0, 0])
        row[0] += int(producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear")
        row[1] += 1
    fed: Counter = Counter()
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or _weight_shape(model, producers, n.input[0]) is not None:
            continue
        for dq in consumers.get(n.output[0], []):
            for user in consumers.get(dq.output[0], []):
                attention = user.op_type == "MatMul" and _weight_shape(model, producers, user.input[1]) is None
                fed["attention MatMul" if attention else user.op_type] += 1
    readiness = tensorrt_readiness(model).to_dict()
    return {"linears": linears, "activation_qdq_feeds": dict(sorted(fed.items())), "tensorrt": readiness}


def run(args: argparse.Namespace, work: Path) -> dict:
    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    calib = calibration_batches(loaded, args.calib, seed=0)
    classifier = loaded.num_classes > 0
    fp32 = export_onnx(loaded.model, work / "fp32.onnx", loaded.input_size)
    np.save(work / "calib.npy", torch.cat(calib).numpy())
    rows = [{"name": "fp32", "path": fp32, "seconds": None}]
    for name, exclude in (("modelopt-int8", []), ("modelopt-int8-no-residual", ["Add", "LayerNormalization"])):
        out = work / f"{name}.onnx"
        seconds = modelopt_quantize(args.modelopt_python, fp32, work / "calib.npy", out, exclude)
        rows.append({"name": name, "path": out, "seconds": seconds})
        print(f"{name}: {seconds:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    model = quantize_(
        copy.deepcopy(loaded.model), QuantConfig.preset("w8a8-trt"), calib, search="minmax", gptq=True, progress=False
    )
    export_quantized_onnx(model, work / "w8a8-trt.onnx", loaded.input_size)
    rows.insert(1, {"name": "w8a8-trt", "path": work / "w8a8-trt.onnx", "seconds": time.perf_counter() - start})
    print(f"w8a8-trt: {rows[1]['seconds']:.0f} s", file=sys.stderr)
    outputs = []
    for row in rows:
        outputs.append(evaluate_onnx(row["path"], data, args.threads, progress=False, optimize=False))
        print(f"{row['name']}: evaluated", file=sys.stderr)
    for row, out in zip(rows, outputs, strict=True):
        row.update(score(out, outputs[0], classifier))
        row.update(placement(row["path"]))
        row["path"] = row["path"].name
    return {
        **run_header(__file__, loaded),
        "data": data.describe(),
        "calibration": f"{loaded.default_calib or 'fashion-mnist:train'}, {args.calib} images (seed 0)",
        "runtime": f"ONNX Runtime CPU EP, graph optimisations off, {args.threads} threads",
        "variants": rows,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def render_markdown(result: dict) -> str:
    rows = result["variants"]
    lines = [
        "# TensorRT-shaped INT8: ours (w8a8-trt) and NVIDIA Model Optimizer (demo)",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {device_line(result['environment'])}",
        f"- **Runtime**: {result['runtime']}",
        f"- **Data**: {result['data']['name']}, {result['data']['samples']} samples (seed 0); "
        f"calibration: {result['calibration']}",
        f"- **Created**: {result['created']}",
        "",
        "| variant | top-1 | agreement with fp32 | quantize s | TensorRT readiness | attention blocks | max tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        trt = r["tensorrt"]
        ready = "ready" if trt["ready"] else ", ".join(dict.fromkeys(f["check"] for f in trt["findings"]))
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(
            f"| {r['name']} | {_pct(r.get('top1'))} | {_pct(r.get('agreement'))} | {seconds} | {ready} | "
            f"{trt['attention_blocks']} | {trt['max_tokens']} |"
        )
    roles = sorted({role for r in rows for role in r["linears"]})
    lines += ["", "Layers reading Q/DQ on both inputs (quantized / all), by op and weight shape:", ""]
    lines += ["| layer | " + " | ".join(r["name"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for role in roles:
        cells = [("{}/{}".format(*r["linears"][role]) if role in r["linears"] else "-") for r in rows]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    feeds = sorted({k for r in rows for k in r["activation_qdq_feeds"]})
    lines += ["", "Activation Q/DQ pairs by the op their DequantizeLinear feeds:", ""]
    lines += ["| feeds | " + " | ".join(r["name"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for kind in feeds:
        lines.append(f"| {kind} | " + " | ".join(str(r["activation_qdq_feeds"].get(kind, 0)) for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images")
    parser.add_argument("--calib", type=int, default=32, help="calibration images (both quantizers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modelopt-python", required=True, help="a Python with nvidia-modelopt[onnx]")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default="trt_demo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / f"{args.name}.json", result)
    atomic_write_text(args.out_dir / f"{args.name}.md", render_markdown(result))
    print(render_markdown(result))


if __name__ == "__main__":
    main()
