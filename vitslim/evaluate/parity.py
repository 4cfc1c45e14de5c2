"""How an exported file's outputs compare with PyTorch's, and how well PyTorch agrees with itself
under rounding-level input noise (the floor no faithful export can beat)."""

from __future__ import annotations

from pathlib import Path

import torch

from vitslim.evaluate.accuracy import Outputs, collect_outputs, fidelity, topk_accuracy, torch_runner
from vitslim.evaluate.data import EvalData, evaluate_onnx
from vitslim.evaluate.latency import resolve_threads, torch_threads
from vitslim.export.validate import parity_of

__all__ = ["NOISE_FLOOR_INPUT", "noise_floor", "onnx_parity", "reference_parity"]


def reference_parity(
    path: Path, data: EvalData, reference: Outputs, threads: int, classifier: bool, progress: bool = True
) -> dict:
    """Parity of ONNX Runtime's reference kernels (graph optimisations off: Q/DQ as float ops, no
    fused int8 kernels) on the file at ``path`` with PyTorch's ``reference`` outputs: what the graph
    itself computes, apart from the CPU's integer kernels."""
    outputs = evaluate_onnx(path, data, threads, progress, optimize=False)
    parity = parity_of(reference.logits, outputs.logits, classifier)
    return {"max_abs_diff": parity["max_abs_diff"], "top1_agreement": parity["top1_agreement"]}


#: Relative input perturbation of the noise-floor check: float32 rounding level, a few ulps.
NOISE_FLOOR_INPUT = 1e-6


def noise_floor(
    model: torch.nn.Module, data: EvalData, outputs: Outputs, threads: int, progress: bool = True, seed: int = 0
) -> dict:
    """How well ``model`` agrees with its own ``outputs`` when every input is scaled by
    ``1 + NOISE_FLOOR_INPUT * N(0, 1)``: no faithful reimplementation (ONNX Runtime's different
    float rounding) can be expected to agree better with a model that amplifies such noise."""
    gen = torch.Generator().manual_seed(seed)
    run = torch_runner(model)

    def perturbed(images: torch.Tensor) -> torch.Tensor:
        return run(images * (1 + NOISE_FLOOR_INPUT * torch.randn(images.shape, generator=gen)))

    with torch_threads(resolve_threads(threads)):
        noisy = collect_outputs(perturbed, data.batches, desc="noise floor", progress=progress)
    fid = fidelity(outputs.logits, noisy.logits, classifier=True)
    return {
        "relative_input_noise": NOISE_FLOOR_INPUT,
        "agreement": fid.agreement,
        "max_abs_diff": float((outputs.logits - noisy.logits).abs().max()),
    }


def onnx_parity(reference: Outputs, onnx_outputs: Outputs, path: Path, opset: int, classifier: bool) -> dict:
    """How the exported model's outputs on real data compare with PyTorch's."""
    parity = parity_of(reference.logits, onnx_outputs.logits, classifier)
    return {
        "file": path.name,
        "opset": opset,
        "size_bytes": path.stat().st_size,
        "max_abs_diff": parity["max_abs_diff"],
        "top1_agreement": parity["top1_agreement"],
        "top1": topk_accuracy(onnx_outputs, 1) if classifier else None,
        "samples": parity["samples"],
        **({"cosine": parity["cosine"]} if "cosine" in parity else {}),
    }
