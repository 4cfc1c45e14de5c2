"""FP32 baseline of the demo model: top-1 on Fashion-MNIST and PyTorch vs ONNX Runtime latency.

    .venv/bin/python benchmarks/bench_fp32.py --limit 2000 --threads 2

Writes benchmarks/results/fp32_demo.{json,md}; the README's baseline table comes from the .md.
Latencies are medians of timed runs measured side by side in this one process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from vitslim.evaluate.data import load_eval_data
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import load_model
from vitslim.pipeline import fp32_report
from vitslim.pipeline.measure import MeasureSettings
from vitslim.report import render_markdown

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST test images (seeded sample)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    loaded = load_model("demo")
    data = load_eval_data(loaded, None, args.limit, seed=0, batch_size=32)
    command = "python benchmarks/bench_fp32.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        settings = MeasureSettings(
            data=data, out_dir=Path(tmp), threads=args.threads, batch_sizes=[1, 16], runs=args.runs
        )
        report = fp32_report(loaded, settings, command=command)
    atomic_write_json(RESULTS / "fp32_demo.json", report)
    atomic_write_text(RESULTS / "fp32_demo.md", render_markdown(report))
    print(render_markdown(report))


if __name__ == "__main__":
    main()
