"""The stage table: every stage a recipe may name, in the order the pipeline applies them.

Recipes (which keys a recipe has, how to parse each, what a target drops), the pipeline (which
stages change the model, which change weights only) and the CLI (the targets) read this table
only. Each stage's family offers one :class:`Family` (named ``"module:attribute"``, imported on
first use): ``from_dict`` building its frozen config (``to_dict``, ``describe``), for a model
stage the one verb ``apply(model, config, calibration) -> StageRecord``, and what the report says
about it: the entries it adds to report variants and how report.md and report.html show them.
Adding a stage touches its family and one :class:`StageSpec` here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vitslim.config import check_choice
from vitslim.errors import UserError

__all__ = ["TARGETS", "STAGES", "StageRecord", "Calibration", "Family", "StageSpec", "StageTable"]

#: deployment targets a recipe can be trimmed for (``--target``)
TARGETS = ("cpu", "gpu")


@dataclass(frozen=True)
class StageRecord:
    """What applying a stage did: a one-line ``description``, the ``config`` applied and what it
    recorded for the report (``report``; None: nothing)."""

    description: str
    config: Any
    report: dict[str, Any] | None = None


class Calibration(Protocol):
    """Calibration images for a stage, with the run's seed and progress setting, and whether the
    deployment CPU's int8 kernels saturate (:func:`vitslim.evaluate.environment.int8_saturates`)."""

    seed: int
    progress: bool
    int8_saturates: bool

    def calibration(self, images: int) -> list[Any]:
        """``images`` seeded, preprocessed calibration images as batches."""


@dataclass(frozen=True)
class Family:
    """What a stage's family offers the pipeline.

    ``from_dict``: recipe settings -> frozen config (UserErrors for mistakes). Model stages:
    ``apply(model, config, calibration) -> StageRecord`` changes ``model`` in place. Before any
    stage runs: ``calibrates(config)`` says whether it will read calibration images, ``check(model,
    config)`` fails in seconds on a config that does not fit the model, ``caution(config,
    calibration)`` -> a warning said before the run (None: nothing; e.g. int8 on a CPU where it
    rarely pays). Stages acting on the exports: ``rule(config or None)`` -> the validation rule
    every exported file is judged by (None: the stage is not in the recipe, its default applies),
    ``finish(config, variants, out_dir, batch_sizes)`` -> ``(report entries, notes)`` once every
    variant is measured (e.g. a TensorRT engine of the last one). Report:
    ``measure(model)`` -> entries of every variant (the uncompressed one too), ``summarize(record,
    model, onnx_path, own)`` -> entries of the variants the stage was applied to (``own``: it was
    applied last), ``notes(variants)`` -> report notes; ``entries``: a TypedDict declaring the
    variant keys those hooks add (the report schema's part owned by the family).

    Rendering, from report.json's dicts alone (an old report re-renders without the model):
    ``columns(variants)`` -> ``(title, one cell per variant)`` columns appended to the accuracy
    table, ``sections(variants)`` -> Markdown lines of the family's own sections (each opening with
    a blank line and a ``##`` heading; nothing when no variant has its entries), ``figures(report)``
    -> ``(caption, png)`` figures. The report shows every family's, in the table's order.
    """

    from_dict: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[Any, Any, Calibration], StageRecord] | None = None
    calibrates: Callable[[Any], bool] | None = None
    check: Callable[[Any, Any], None] | None = None
    caution: Callable[[Any, Calibration], str | None] | None = None
    rule: Callable[[Any], Any] | None = None
    finish: Callable[[Any, list[dict], Path, Sequence[int]], tuple[dict[str, Any], list[str]]] | None = None
    measure: Callable[[Any], dict[str, Any]] | None = None
    summarize: Callable[[StageRecord, Any, Path, bool], dict[str, Any]] | None = None
    notes: Callable[[list[dict]], list[str]] | None = None
    entries: type | None = None
    columns: Callable[[list[dict]], list[tuple[str, list[str]]]] | None = None
    sections: Callable[[list[dict]], list[str]] | None = None
    figures: Callable[[dict], list[tuple[str, bytes]]] | None = None


@dataclass(frozen=True)
class StageSpec:
    """One row of the table.

    ``order``: position in the pipeline (lower first). ``family``: ``"module:attribute"`` of its
    :class:`Family`. ``model_stage``: it changes the model (it gets a variant; otherwise it acts
    on the exports). ``weight_only``: it changes weight values only, so its variant's ONNX graph
    is its base's. ``may_follow``: the model stages that may be applied after it.
    ``cannot_pay``: target -> why the stage brings nothing there (``Recipe.for_target`` drops it).
    """

    name: str
    order: int
    family: str
    model_stage: bool = True
    weight_only: bool = False
    may_follow: tuple[str, ...] = ()
    cannot_pay: Mapping[str, str] = field(default_factory=dict)

    def load(self) -> Family:
        """The stage's :class:`Family` (its module imported now)."""
        module, _, attribute = self.family.partition(":")
        return getattr(importlib.import_module(module), attribute)


class StageTable:
    """The stages by name, in pipeline order."""

    def __init__(self, specs: Iterable[StageSpec]) -> None:
        self._specs = {s.name: s for s in sorted(specs, key=lambda s: s.order)}
        unknown = sorted({f for s in self._specs.values() for f in s.may_follow} - set(self._specs))
        if unknown:
            raise ValueError(f"may_follow names unknown stages: {unknown}")

    def __iter__(self) -> Iterator[StageSpec]:
        return iter(self._specs.values())

    def __getitem__(self, name: str) -> StageSpec:
        return self._specs[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def with_stage(self, spec: StageSpec) -> StageTable:
        """This table with ``spec`` added (or replacing the stage of its name)."""
        return StageTable([*(s for s in self if s.name != spec.name), spec])

    def check_chain(self, names: Sequence[str], where: str) -> None:
        """A UserError when a model stage of ``names`` (in pipeline order) may not follow the one before it."""
        chain = [n for n in names if self[n].model_stage]
        for before, after in zip(chain, chain[1:], strict=False):
            if after not in self[before].may_follow:
                raise UserError(f"{where}: stage {after!r} cannot follow {before!r}")

    def cannot_pay(self, target: str) -> dict[str, str]:
        """The stages that cannot pay on ``target`` (one of :data:`TARGETS`), with why."""
        check_choice("target", target, TARGETS)
        return {s.name: s.cannot_pay[target] for s in self if target in s.cannot_pay}


#: every stage a recipe may name
STAGES = StageTable(
    [
        StageSpec("tokens", 10, "vitslim.compress.tokens.stage:STAGE", may_follow=("sparsity", "quant")),
        StageSpec(
            "sparsity",
            20,
            "vitslim.compress.sparsity.stage:STAGE",
            weight_only=True,
            may_follow=("quant",),
            cannot_pay={
                "cpu": "2:4 sparsity brings no speed on a CPU (no CPU runtime has 2:4 sparse kernels) and costs "
                "accuracy"
            },
        ),
        StageSpec("quant", 30, "vitslim.compress.quant.stage:STAGE"),
        StageSpec("export", 40, "vitslim.export.stages:EXPORT", model_stage=False),
        StageSpec("validate", 50, "vitslim.export.validate:VALIDATE", model_stage=False),
    ]
)
