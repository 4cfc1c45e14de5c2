"""Evaluation split over workers, merged exactly.

The evaluation sample (a seeded subset of a dataset, in a fixed order) is cut into contiguous
shards at batch boundaries; each worker rebuilds its shard from the dataset spec (no images
travel), runs the same batches the single-process evaluation would, and the logits come back in
order. Counts, agreement and KL computed from the merged logits are then those of one process
(bit for bit, given the same kernels and thread count per batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vitslim.calib import build_transform, load_dataset
from vitslim.evaluate.accuracy import Outputs, Runner, collect_outputs, ort_runner, torch_runner
from vitslim.executors import Executor

__all__ = ["Shard", "Sharding", "TorchRunnerFactory", "OrtRunnerFactory", "shards_of", "evaluate_sharded"]


@dataclass(frozen=True)
class Shard:
    """Contiguous batches of an evaluation sample: how a worker rebuilds them."""

    dataset: str
    data_config: dict[str, Any]
    indices: tuple[int, ...]
    batch_size: int


@dataclass(frozen=True)
class Sharding:
    """How an evaluation is split: its shards, the executor that runs them and each task's threads."""

    executor: Executor
    shards: list[Shard]
    task_threads: int = 1


@dataclass(frozen=True)
class TorchRunnerFactory:
    """A PyTorch model (pickled to the worker) run with ``threads`` threads."""

    model: torch.nn.Module
    threads: int

    def __call__(self) -> Runner:
        torch.set_num_threads(self.threads)
        return torch_runner(self.model)


@dataclass(frozen=True)
class OrtRunnerFactory:
    """An ONNX model (its bytes travel, so workers need no shared disk) run by ONNX Runtime."""

    model: bytes
    threads: int

    def __call__(self) -> Runner:
        return ort_runner(self.model, threads=self.threads)


def shards_of(
    dataset: str, data_config: dict[str, Any], indices: list[int], batch_size: int, count: int
) -> list[Shard]:
    """``indices`` (the evaluation sample, in order) cut into at most ``count`` shards of whole batches."""
    batches = math.ceil(len(indices) / batch_size)
    per_shard = math.ceil(batches / max(1, min(count, batches)))
    step = per_shard * batch_size
    return [
        Shard(dataset, dict(data_config), tuple(indices[start : start + step]), batch_size)
        for start in range(0, len(indices), step)
    ]


def evaluate_shard(job: tuple[int, Callable[[], Runner], Shard]) -> Outputs:
    """Worker side: rebuild one shard's batches and run them (``job``: position, runner factory, shard)."""
    from torch.utils.data import DataLoader, Subset

    _, factory, shard = job
    dataset = load_dataset(shard.dataset, transform=build_transform(shard.data_config))
    loader = DataLoader(Subset(dataset, list(shard.indices)), batch_size=shard.batch_size, shuffle=False)
    return collect_outputs(factory(), loader, progress=False)


def evaluate_sharded(factory: Callable[[], Runner], shards: list[Shard], executor: Executor) -> Outputs:
    """Run every shard on ``executor`` and merge the outputs in sample order; the first failure is raised."""
    results: dict[int, Outputs] = {}
    for (position, _, _), result in executor.map(evaluate_shard, [(i, factory, s) for i, s in enumerate(shards)]):
        if isinstance(result, BaseException):
            raise result
        results[position] = result
    ordered = [results[i] for i in range(len(shards))]
    return Outputs(torch.cat([o.logits for o in ordered]), torch.cat([o.labels for o in ordered]))
