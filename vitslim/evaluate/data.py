"""Evaluation data and running models on it: a seeded sample of a dataset in a fixed order (so
every variant sees the same images), evaluated in PyTorch or ONNX Runtime, shard by shard on an
executor when asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.errors import UserError
from vitslim.evaluate.accuracy import Outputs, collect_outputs, ort_runner, torch_runner
from vitslim.evaluate.device import module_device
from vitslim.evaluate.latency import resolve_threads, torch_threads
from vitslim.evaluate.sharded import OrtRunnerFactory, Sharding, TorchRunnerFactory, evaluate_sharded, shards_of
from vitslim.executors import Executor
from vitslim.models import LoadedModel

__all__ = ["EvalData", "load_eval_data", "shard_eval_data", "evaluate_torch", "evaluate_onnx"]


@dataclass
class EvalData:
    """A seeded sample of a dataset in a fixed order, so every variant sees the same images."""

    name: str
    batches: DataLoader
    labelled: bool
    skipped: int
    #: the preprocessing (timm data config) the batches were made with
    data_config: dict[str, Any] = field(default_factory=dict)
    #: when set, evaluations run shard by shard on an executor (:func:`shard_eval_data`)
    sharding: Sharding | None = None

    @property
    def samples(self) -> int:
        return len(self.batches.dataset)  # type: ignore[arg-type]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "samples": self.samples,
            "labelled": self.labelled,
            "skipped_unreadable": self.skipped,
        }


def load_eval_data(loaded: LoadedModel, spec: str | None, limit: int | None, seed: int, batch_size: int) -> EvalData:
    """Preprocess ``limit`` seeded images of ``spec`` (default: the model's own test data)."""
    spec = spec or loaded.default_data
    if spec is None:
        raise UserError(f"--data is required for model {loaded.name} (an image folder)")
    dataset = load_dataset(spec, transform=build_transform(loaded.data_config))
    batches = make_loader(dataset, batch_size=batch_size, limit=limit, seed=seed)
    labelled, skipped = bool(getattr(dataset, "labelled", False)), len(getattr(dataset, "skipped", []))
    return EvalData(spec, batches, labelled, skipped, dict(loaded.data_config))


def shard_eval_data(data: EvalData, executor: Executor, workers: int, task_threads: int = 1) -> EvalData:
    """``data`` evaluated from now on in up to ``workers`` shards on ``executor`` (merged exactly:
    :mod:`vitslim.evaluate.sharded`), each task with ``task_threads`` threads."""
    indices = list(data.batches.dataset.indices)  # type: ignore[attr-defined]
    shards = shards_of(data.name, data.data_config, indices, data.batches.batch_size or 1, workers)
    data.sharding = Sharding(executor, shards, task_threads)
    return data


def evaluate_torch(model: torch.nn.Module, data: EvalData, threads: int, progress: bool = True) -> Outputs:
    """``model``'s outputs on ``data`` (shard by shard when ``data`` is sharded; a model on a GPU
    stays here)."""
    if data.sharding is not None and module_device(model).type == "cpu":
        factory = TorchRunnerFactory(model, data.sharding.task_threads)
        return evaluate_sharded(factory, data.sharding.shards, data.sharding.executor)
    with torch_threads(resolve_threads(threads)):
        return collect_outputs(torch_runner(model), data.batches, desc="evaluate pytorch", progress=progress)


def evaluate_onnx(
    path: str | Path,
    data: EvalData,
    threads: int,
    progress: bool = True,
    providers: list | None = None,
    optimize: bool = True,
) -> Outputs:
    """ONNX Runtime's outputs of the model at ``path`` on ``data`` (shard by shard when ``data`` is
    sharded and the CPU provider runs it with graph optimisations). ``optimize=False``: ONNX
    Runtime's reference kernels (Q/DQ run as float ops, no fused int8 kernels)."""
    if data.sharding is not None and providers in (None, ["CPUExecutionProvider"]) and optimize:
        factory = OrtRunnerFactory(Path(path).read_bytes(), data.sharding.task_threads)
        return evaluate_sharded(factory, data.sharding.shards, data.sharding.executor)
    runner = ort_runner(str(path), threads=resolve_threads(threads), providers=providers, optimize=optimize)
    desc = "evaluate onnxruntime" if optimize else "reference kernels"
    return collect_outputs(runner, data.batches, desc=desc, progress=progress)
