"""``vitslim eval``: a model's scores on evaluation data and, optionally, an exported file's in a
runtime against it."""

from __future__ import annotations

from pathlib import Path

from vitslim.errors import UserError
from vitslim.evaluate.accuracy import score
from vitslim.evaluate.data import EvalData, evaluate_torch
from vitslim.evaluate.features import feature_fidelity
from vitslim.models import LoadedModel
from vitslim.models.features import split_outputs, with_output

__all__ = ["evaluate_model"]


def evaluate_model(
    loaded: LoadedModel,
    data: EvalData,
    threads: int,
    onnx_path: Path | None = None,
    runtime: str = "onnxruntime",
    output: str = "logits",
    progress: bool = True,
) -> list[dict]:
    """PyTorch's scores on ``data`` and, with ``onnx_path``, the exported file's against PyTorch
    in ``runtime`` (``vitslim eval``). ``output``: what both output (the file must have been
    exported with it); features add their fidelity record (:mod:`vitslim.evaluate.features`)."""
    classifier = loaded.num_classes > 0 and output == "logits"
    model = with_output(loaded.model, output, loaded.num_classes > 0)
    reference = evaluate_torch(model, data, threads, progress)
    runs = [("pytorch", reference)]
    if onnx_path is not None:
        from vitslim.runtimes import RUNTIMES

        runs.append(RUNTIMES[runtime].evaluate_file(onnx_path, data, threads, progress))
        if runs[-1][1].logits[0].numel() != reference.logits[0].numel():
            raise UserError(
                f"{onnx_path} outputs {runs[-1][1].logits[0].numel()} values per image, the model with --output "
                f"{output} {reference.logits[0].numel()}: export it with the same --output"
            )
    results = [{"name": name, **score(outputs, reference, classifier)} for name, outputs in runs]
    if output != "logits":
        layout = model.layout(loaded.input_size)
        ref = split_outputs(reference.logits, layout)
        for row, (_, outputs) in zip(results, runs, strict=True):
            row.update(feature_fidelity(ref, split_outputs(outputs.logits, layout), outputs.labels))
    return results
