"""Sweep candidates: recipes, and recipes with one key varied (``--grid tokens.r=8,16``).

A grid key is a dotted path into a recipe's ``stages`` as written in its YAML
(``tokens.r``, ``quant.mixed_precision.budget.avg_weight_bits``); each value makes one
candidate of every listed recipe that has that stage. Values are read as YAML scalars
(``8`` is an int, ``0.7`` a float, ``true`` a bool). Every candidate is parsed and checked
before anything runs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from vitslim.errors import UserError
from vitslim.recipes import Recipe, parse_recipe, recipe_source

__all__ = ["Candidate", "GridAxis", "parse_grid", "build_candidates"]

#: characters kept in a candidate's folder name
_SAFE = re.compile(r"[^A-Za-z0-9._=@+-]+")


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid`` option: a dotted key under ``stages`` and the values it takes."""

    key: str
    values: tuple[Any, ...]

    @property
    def stage(self) -> str:
        return self.key.split(".", 1)[0]


@dataclass(frozen=True)
class Candidate:
    """One recipe to compress, measure and compare; ``name`` is also its folder's name."""

    name: str
    recipe: Recipe
    base: str
    change: str | None = None  # "tokens.r=16", None for the recipe as written


def parse_grid(option: str) -> GridAxis:
    """``stage.key=v1,v2,...`` -> :class:`GridAxis` (a UserError when malformed)."""
    key, sep, values = option.partition("=")
    key = key.strip()
    if not sep or "." not in key or not values.strip():
        raise UserError(f"--grid {option!r}: expected stage.key=value1,value2 (e.g. tokens.r=8,16)")
    parsed = tuple(yaml.safe_load(v.strip()) for v in values.split(",") if v.strip())
    return GridAxis(key, parsed)


def _set(mapping: dict[str, Any], key: str, value: Any, where: str) -> None:
    *parents, last = key.split(".")
    node = mapping
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{where}: {part!r} is not a mapping of settings, cannot set {key!r}")
        node = child
    node[last] = value


def _folder_name(text: str) -> str:
    return _SAFE.sub("_", text)


def build_candidates(recipes: Sequence[str], grid: Sequence[GridAxis] = ()) -> list[Candidate]:
    """Every recipe as written, then per grid axis and value every recipe with that stage changed.
    Raises a UserError before anything runs when a recipe, key or value does not parse, or when a
    grid axis applies to none of the recipes."""
    if not recipes:
        raise UserError("--recipes needs at least one recipe")
    candidates: list[Candidate] = []
    sources = [(name, *recipe_source(name)) for name in recipes]
    for _, data, source, default in sources:
        recipe = parse_recipe(data, source, default)
        candidates.append(Candidate(_folder_name(recipe.name), recipe, recipe.name))
    for axis in grid:
        applied = 0
        for name, data, source, default in sources:
            if not isinstance(data, dict) or axis.stage not in (data.get("stages") or {}):
                continue
            applied += 1
            for value in axis.values:
                changed = copy.deepcopy(data)
                _set(changed["stages"], axis.key, value, f"--grid {axis.key} on recipe {name}")
                change = f"{axis.key}={value}"
                label = f"{data.get('name', default)}@{change}"
                changed["name"] = label
                recipe = parse_recipe(changed, f"{source} with {change}", label)
                candidates.append(Candidate(_folder_name(label), recipe, str(data.get("name", default)), change))
        if not applied:
            raise UserError(f"--grid {axis.key}: none of the recipes ({', '.join(recipes)}) has a {axis.stage} stage")
    names = [c.name for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"the sweep names a candidate twice: {', '.join(duplicates)}")
    return candidates
