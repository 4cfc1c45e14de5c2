"""Declarative YAML recipes: which compression stages to run, with which settings.

A recipe is a mapping with an optional ``name`` and ``description`` and a ``stages`` mapping
from stage name to that stage's settings::

    name: tome-r8
    description: ToMe merging, 8 tokens per block
    stages:
      tokens: {method: tome, r: 8, schedule: constant, proportional_attention: true}

Stages are those of the stage table (:mod:`vitslim.stages`) and always run in its order,
whatever their order in the file. Built-in recipes (``vitslim/builtin_recipes/*.yaml``, package
data) load by name: ``load_recipe("tome-r8")``; anything else is read as a path to a YAML file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitslim import stages as stage_table
from vitslim.config import check_keys, suggest
from vitslim.errors import UserError

RECIPE_KEYS = ("name", "description", "stages")
RECIPE_SUFFIXES = (".yaml", ".yml")
#: the built-in recipes: package data
BUILTIN_DIR = Path(__file__).with_name("builtin_recipes")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: ``stages`` maps stage name to its config, in the stage table's order."""

    name: str
    description: str
    stages: dict[str, Any]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "stages": {name: cfg.to_dict() for name, cfg in self.stages.items()},
        }

    def for_target(self, target: str) -> tuple[Recipe, dict[str, str]]:
        """This recipe without the stages that cannot pay on ``target`` (one of
        :data:`~vitslim.stages.TARGETS`), and the dropped stages with the reason for each."""
        table = stage_table.STAGES
        dropped = {stage: why for stage, why in table.cannot_pay(target).items() if stage in self.stages}
        if not dropped:
            return self, {}
        kept = {stage: cfg for stage, cfg in self.stages.items() if stage not in dropped}
        if not any(table[stage].model_stage for stage in kept):
            raise UserError(f"recipe {self.name} has nothing left for target {target}: {'; '.join(dropped.values())}")
        return dataclasses.replace(self, stages=kept), dropped


# --------------------------------------------------------------------------- built-in recipes


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names and their files (``vitslim/builtin_recipes/``, shipped as package data)."""
    return dict(sorted((p.stem, p) for p in BUILTIN_DIR.iterdir() if p.suffix in RECIPE_SUFFIXES))


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    return list(builtin_recipes())


# --------------------------------------------------------------------------- validation


def parse_recipe(data: Any, source: str, default_name: str) -> Recipe:
    """Validate the loaded YAML ``data`` of a recipe read from ``source``."""
    where, table = f"recipe {source}", stage_table.STAGES
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping with a 'stages' key, got {type(data).__name__}")
    check_keys(data, RECIPE_KEYS, where)
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{where}: {key} must be a string, got {data[key]!r}")
    raw = data.get("stages")
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(f"{where} needs 'stages': a mapping of one or more of {', '.join(table.names)}")
    check_keys(raw, table.names, f"{where} (stages)")
    parsed = {}
    for stage in (s for s in table.names if s in raw):
        settings = raw[stage]
        if not isinstance(settings, Mapping):
            raise UserError(f"{where}: stages.{stage} must be a mapping of settings, got {settings!r}")
        try:
            parsed[stage] = table[stage].load().from_dict(settings)
        except UserError as exc:
            raise UserError(f"{where} (stages.{stage}): {exc}") from None
    table.check_chain(list(parsed), where)
    return Recipe(data.get("name", default_name), data.get("description", ""), parsed, source)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"cannot read recipe {path}: invalid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {getattr(exc, 'strerror', None) or exc}") from None


def recipe_source(name_or_path: str | Path) -> tuple[Any, str, str]:
    """The YAML mapping of a built-in recipe (by name) or a recipe file, as written (not yet
    checked), with its source and default name: what :func:`load_recipe` parses."""
    text = str(name_or_path)
    builtins = builtin_recipes()
    if text in builtins:
        path = builtins[text]
        return _read_yaml(path), path.name, path.stem
    path = Path(text)
    if path.suffix in RECIPE_SUFFIXES or path.exists() or len(path.parts) > 1:
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist")
        return _read_yaml(path), str(path), path.stem
    hint = suggest(text, builtins) or ";"
    raise UserError(
        f"unknown recipe {text!r}{hint} built-in recipes: {', '.join(builtins) or 'none found'} "
        "(or give the path of a .yaml file)"
    )


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name (see :func:`list_recipes`) or a recipe from a YAML file."""
    return parse_recipe(*recipe_source(name_or_path))


def recipe_with_stage(
    base: str | Path | None, stage: str, settings: Mapping[str, Any], name: str, description: str
) -> dict[str, Any]:
    """The mapping of recipe ``base`` as written (None: no stages) with ``stage``'s settings replaced
    and a new name and description; checked by :func:`parse_recipe`."""
    data = dict(recipe_source(base)[0]) if base is not None else {}
    stages = {**dict(data.get("stages") or {}), stage: dict(settings)}
    data.update(name=name, description=description, stages=stages)
    parse_recipe(data, f"{name} (built from {base or 'nothing'})", name)
    return data


def recipe_yaml(data: Mapping[str, Any], comment: Iterable[str] = ()) -> str:
    """``data`` as recipe YAML (key order kept) under ``# `` comment lines."""
    head = "".join(f"# {line}\n" for line in comment)
    return head + yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None, width=110)
