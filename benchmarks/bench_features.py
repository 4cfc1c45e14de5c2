"""The demo backbone as a feature extractor: DINOv2-S features (no head) of Fashion-MNIST through
vitslim's ``w8a8`` and ``cpu`` recipes, judged the way retrieval and k-NN users judge an encoder.

    .venv/bin/python benchmarks/bench_features.py --gallery 2000 --queries 500

Each variant is built by the pipeline as ``vitslim compress`` builds it, exported with
``--output both`` (pooled embedding and patch-token map, unmerged after ToMe; the gallery with
``--output pooled``) and run in ONNX Runtime. Gallery: ``--gallery`` seeded Fashion-MNIST *train*
images (seed 1; the recipes calibrate on a seed-0 sample of the train images), queries:
``--queries`` seeded *test* images. Per variant:

* kNN top-1 of the queries against the gallery (cosine-weighted vote of the 10 nearest, as DINO's
  k-NN evaluation), the gallery embedded by the same variant (a re-indexed deployment) and by fp32
  (only the query encoder compressed);
* pooled and patch cosine with fp32 on the queries (mean, worst 1%), neighbour recall@1/@10 among
  the queries (:mod:`vitslim.evaluate.features`).

Writes features_demo.{json,md} into --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from run_header import run_header

from vitslim.evaluate.data import EvalData, evaluate_onnx, load_eval_data
from vitslim.evaluate.features import feature_fidelity, knn_top1, retrieval_embedding
from vitslim.export.variant import export_variant
from vitslim.files import atomic_write_json, atomic_write_text
from vitslim.models import LoadedModel, load_model
from vitslim.models.features import FeatureOutputs, split_outputs
from vitslim.pipeline import StageContext, build_variants
from vitslim.recipes import load_recipe
from vitslim.report.format import md_table

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("w8a8", "cpu")


def _export(model: torch.nn.Module, loaded: LoadedModel, path: Path, output: str) -> tuple[Path, list]:
    """``model``'s ``--output <output>`` ONNX file and its outputs' layout."""
    wrapped = FeatureOutputs(model, output, classifier=loaded.num_classes > 0)
    onnx_path, _, _ = export_variant(wrapped, path, loaded.input_size)
    return onnx_path, wrapped.layout(loaded.input_size)


def _features(path: Path, layout: list, data: EvalData, threads: int) -> tuple[dict, torch.Tensor]:
    """Pooled and patch features of ``data`` in ONNX Runtime, and the labels."""
    flat = evaluate_onnx(path, data, threads, progress=False)
    return split_outputs(flat.logits, layout), flat.labels


def run(gallery_n: int, queries_n: int, threads: int) -> dict:
    loaded = load_model("demo")
    gallery = load_eval_data(loaded, "fashion-mnist:train", gallery_n, 1, 32)
    queries = load_eval_data(loaded, "fashion-mnist:test", queries_n, 0, 32)
    ctx = StageContext(loaded, progress=False)
    models = {"fp32": loaded.model}
    for recipe in RECIPES:
        models[recipe] = build_variants(loaded.model, load_recipe(recipe), ctx)[-1].model
    rows, embedded = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            start = time.perf_counter()
            path, layout = _export(model, loaded, Path(tmp) / f"{name}_pooled.onnx", "pooled")
            g_parts, g_labels = _features(path, layout, gallery, threads)  # the gallery needs no patch maps
            path, layout = _export(model, loaded, Path(tmp) / f"{name}_both.onnx", "both")
            q_parts, q_labels = _features(path, layout, queries, threads)
            embedded[name] = (retrieval_embedding(g_parts), retrieval_embedding(q_parts), q_parts)
            g, q, _ = embedded[name]
            fp32_g = embedded["fp32"][0]
            row = {
                "variant": name,
                **feature_fidelity(embedded["fp32"][2], q_parts, q_labels),  # its knn_top1: among the queries
                "knn_top1_gallery": knn_top1(q, q_labels, g, g_labels),
                "knn_top1_fp32_gallery": knn_top1(q, q_labels, fp32_g, g_labels),
                "patch_shape": list(q_parts["patch"].shape[1:]),
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            print(row, flush=True)
    return {"gallery": gallery.describe(), "queries": queries.describe(), "rows": rows, "loaded": loaded}


def _markdown(result: dict) -> str:
    header = ["variant", "kNN top-1", "kNN top-1, fp32 gallery", "pooled cos (mean / worst 1%)"]
    header += ["patch cos (mean / worst 1%)", "recall@1", "recall@10", "patch map"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    rows = [
        [
            r["variant"],
            pct(r["knn_top1_gallery"]),
            pct(r["knn_top1_fp32_gallery"]),
            f"{r['pooled_cosine']:.4f} / {r['pooled_cosine_worst_1pct']:.4f}",
            f"{r['patch_cosine']:.4f} / {r['patch_cosine_worst_1pct']:.4f}",
            pct(r["recall_at_1"]),
            pct(r["recall_at_10"]),
            "x".join(map(str, r["patch_shape"])),
        ]
        for r in result["rows"]
    ]
    data = f"gallery {result['gallery']['samples']} train images, queries {result['queries']['samples']} test images"
    return "\n".join([f"`{result['command']}` ({data}, ONNX Runtime)", "", *md_table(header, rows)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.gallery, args.queries, args.threads)
    loaded = result.pop("loaded")
    result = {**run_header(__file__, loaded), **result}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "features_demo.json", result)
    text = _markdown(result)
    atomic_write_text(args.out_dir / "features_demo.md", text)
    print(text)


if __name__ == "__main__":
    main()
