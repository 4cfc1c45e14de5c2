"""Accuracy on labelled data and fidelity against a reference model's outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitslim.models.features import flatten_outputs

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Outputs:
    """Model outputs over a dataset: ``logits`` [N, C] and ``labels`` [N] (-1 when unlabelled)."""

    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).all()) and len(self.labels) > 0


def torch_runner(model: torch.nn.Module) -> Runner:
    """Run a PyTorch model without gradients, on its own device (outputs come back to the CPU;
    several outputs flattened into one row per image)."""
    from vitslim.evaluate.device import module_device

    model.eval()
    device = module_device(model)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return flatten_outputs(model(images.to(device))).float().cpu()

    return run


def ort_runner(path: str | bytes, threads: int = 0, providers: list | None = None, optimize: bool = True) -> Runner:
    """Run an exported ONNX model (a file, or its bytes) in ONNX Runtime (CPU unless ``providers``
    say otherwise; ``optimize=False``: reference kernels, Q/DQ run as written); several outputs are
    flattened into one row per image, in the file's order."""
    from vitslim.evaluate.runtimes import ort_session

    session = ort_session(path, threads=threads, providers=providers, optimize=optimize)
    input_name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        outs = [torch.from_numpy(out) for out in session.run(None, {input_name: images.numpy()})]
        return flatten_outputs(outs[0] if len(outs) == 1 else outs).float()

    return run


def collect_outputs(
    runner: Runner, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str = "evaluate", progress: bool = True
) -> Outputs:
    """Run every batch of ``(images, labels)`` through ``runner``."""
    logits, labels = [], []
    for images, target in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        logits.append(runner(images))
        labels.append(target)
    if not logits:
        raise ValueError("no data to evaluate")
    return Outputs(torch.cat(logits), torch.cat(labels).long())


def topk_accuracy(outputs: Outputs, k: int) -> float | None:
    """Fraction of samples whose label is among the ``k`` highest logits; None if unlabelled or k > classes."""
    if not outputs.labelled or outputs.logits.shape[1] < k:
        return None
    top = outputs.logits.topk(k, dim=1).indices
    return float((top == outputs.labels[:, None]).any(dim=1).float().mean())


@dataclass(frozen=True)
class Fidelity:
    """How closely outputs follow a reference: argmax agreement, mean cosine, mean KL(ref || out)."""

    agreement: float | None
    cosine: float
    kl: float | None


def fidelity(reference: torch.Tensor, outputs: torch.Tensor, classifier: bool = True) -> Fidelity:
    """Compare ``outputs`` with ``reference`` (same inputs, same order).

    For a headless backbone (``classifier=False``) outputs are features: only cosine applies.
    """
    if reference.shape != outputs.shape:
        raise ValueError(f"output shapes differ: {tuple(reference.shape)} vs {tuple(outputs.shape)}")
    reference, outputs = reference.flatten(1).double(), outputs.flatten(1).double()
    cosine = float(F.cosine_similarity(reference, outputs, dim=1).mean())
    if not classifier:
        return Fidelity(None, cosine, None)
    agreement = float((reference.argmax(1) == outputs.argmax(1)).double().mean())
    kl = F.kl_div(F.log_softmax(outputs, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    return Fidelity(agreement, cosine, float(kl))


def score(outputs: Outputs, reference: Outputs | None, classifier: bool) -> dict:
    """top-1/top-5 (None when unlabelled) and fidelity against ``reference`` (itself when None)."""
    fid = fidelity((reference or outputs).logits, outputs.logits, classifier=classifier)
    return {
        "top1": topk_accuracy(outputs, 1) if classifier else None,
        "top5": topk_accuracy(outputs, 5) if classifier else None,
        "agreement": fid.agreement,
        "cosine": fid.cosine,
        "kl": fid.kl,
    }
