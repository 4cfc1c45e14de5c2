"""Where the time goes: per-operator time of exported models in OpenVINO and ONNX Runtime.

    .venv/bin/python benchmarks/profile_cpu.py --name after model_quant.onnx model_tokens.onnx --batch 16

For each file: OpenVINO (IR or ONNX, default precision) with ``PERF_COUNT`` on, summed per
(layer type, kernel) over the timed calls; ONNX Runtime's own profiler (ONNX files), summed per
op type. Both profilers add overhead, so their totals exceed the plain latency: read the shares,
not the milliseconds. Appends a section to profile_<name>.md in --out-dir (default
benchmarks/results).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vitslim.evaluate.environment import environment
from vitslim.evaluate.openvino_runtime import require_openvino
from vitslim.files import atomic_write_text
from vitslim.report.markdown import device_line

RESULTS = Path(__file__).resolve().parent / "results"
TOP = 12


def random_input(path: Path, batch: int) -> np.ndarray:
    """Random images of the model's input size (read from the file)."""
    model = require_openvino().Core().read_model(str(path))
    size = [d.get_length() for d in list(model.input(0).get_partial_shape())[1:]]
    return np.random.default_rng(0).standard_normal((batch, *size), dtype=np.float32)


def openvino_profile(path: Path, x: np.ndarray, threads: int, calls: int) -> tuple[dict, int]:
    """Mean ms per call by (layer type, kernel) and the number of runtime nodes."""
    ov = require_openvino()
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([*x.shape])
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "PERF_COUNT": True}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    totals: collections.Counter = collections.Counter()
    for index in range(calls + 2):
        request.infer({0: x})
        if index >= 2:  # two warm-up calls
            for info in request.profiling_info:
                totals[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1000 / calls
    return dict(totals), len(request.profiling_info)


def ort_profile(path: Path, x: np.ndarray, threads: int, calls: int) -> tuple[dict, int]:
    """Mean ms per call by op type (ONNX Runtime's profiler) and the number of nodes it ran."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(calls + 2):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    timed_from = starts[2]  # after two warm-up calls
    totals: collections.Counter = collections.Counter()
    nodes = set()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / calls
            nodes.add(event["name"])
    return dict(totals), len(nodes)


def section(title: str, totals: dict, nodes: int) -> list[str]:
    total = sum(totals.values())
    lines = [f"**{title}**: {total:.1f} ms per call in {nodes} nodes (profiler on)", ""]
    lines += ["| op | ms per call | share |", "|---|---|---|"]
    for op, ms in sorted(totals.items(), key=lambda item: -item[1])[:TOP]:
        label = " / ".join(op) if isinstance(op, tuple) else op
        lines.append(f"| {label} | {ms:.2f} | {100 * ms / total:.1f}% |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="ONNX files (OpenVINO also takes IR .xml)")
    parser.add_argument("--name", required=True, help="results go to profile_<name>.md")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    lines = [
        f"# Per-operator profile: {args.name}",
        "",
        f"- **Command**: `python benchmarks/profile_cpu.py --name {args.name} --batch {args.batch} "
        f"--threads {args.threads} --calls {args.calls} {' '.join(p.name for p in args.files)}`",
        f"- **Machine**: {device_line(environment())}",
        f"- batch {args.batch}, {args.threads} threads, mean of {args.calls} calls after 2 warm-up calls, "
        "random inputs",
        "",
    ]
    for path in args.files:
        x = random_input(path, args.batch)
        lines += section(f"{path.name}, OpenVINO", *openvino_profile(path, x, args.threads, args.calls))
        if path.suffix == ".onnx":
            lines += section(f"{path.name}, ONNX Runtime", *ort_profile(path, x, args.threads, args.calls))
    text = "\n".join(lines)
    atomic_write_text(args.out_dir / f"profile_{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
