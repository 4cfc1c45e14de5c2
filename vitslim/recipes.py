"""Declarative YAML recipes: which compression stages to run, with which settings.

A recipe is a mapping with an optional ``name`` and ``description`` and a ``stages`` mapping
from stage name to that stage's settings::

    name: tome-r8
    description: ToMe merging, 8 tokens per block
    stages:
      tokens: {method: tome, r: 8, schedule: constant, proportional_attention: true}

Stages always run in the pipeline order of :data:`STAGE_ORDER`, whatever their order in the
file. Built-in recipes (``recipes/*.yaml`` in the source tree, installed as data files) load
by name: ``load_recipe("tome-r8")``; anything else is read as a path to a YAML file.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitslim.compress.quant.stage import QuantStage
from vitslim.compress.sparsity import SparsityConfig
from vitslim.compress.tokens import TOKEN_REDUCERS, TokenReductionConfig, token_config_from_dict
from vitslim.errors import UserError
from vitslim.export.stages import ExportStage, ValidateStage

#: deployment targets a recipe can be trimmed for, and the stages that cannot pay on each (why)
TARGET_DROPS: dict[str, dict[str, str]] = {
    "cpu": {
        "sparsity": "2:4 sparsity brings no speed on a CPU (no CPU runtime has 2:4 sparse kernels) and costs accuracy"
    },
    "gpu": {},
}
#: every stage a recipe may name, in the order the pipeline applies them
STAGE_ORDER = ("tokens", "sparsity", "quant", "export", "validate")
RECIPE_KEYS = ("name", "description", "stages")
RECIPE_SUFFIXES = (".yaml", ".yml")
#: where built-in recipes are installed, relative to the environment's data folder
INSTALLED_RECIPES = ("share", "vitslim", "recipes")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: ``stages`` maps stage name to its config, in :data:`STAGE_ORDER`."""

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
        """This recipe without the stages that cannot pay on ``target`` (``cpu`` or ``gpu``, see
        :data:`TARGET_DROPS`), and the dropped stages with the reason for each."""
        if target not in TARGET_DROPS:
            raise UserError(f"unknown target {target!r} (choose from {', '.join(TARGET_DROPS)})")
        dropped = {stage: why for stage, why in TARGET_DROPS[target].items() if stage in self.stages}
        if not dropped:
            return self, {}
        stages = {stage: cfg for stage, cfg in self.stages.items() if stage not in dropped}
        if not any(stage in stages for stage in ("tokens", "sparsity", "quant")):
            raise UserError(f"recipe {self.name} has nothing left for target {target}: {'; '.join(dropped.values())}")
        return dataclasses.replace(self, stages=stages), dropped


# --------------------------------------------------------------------------- built-in recipes


def _recipe_dirs() -> list[Path]:
    """Folders holding built-in recipes: the source checkout's ``recipes/`` first (editable
    installs see edits live), then the copy installed with the package's data files."""
    dirs = []
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "recipes").is_dir():
        dirs.append(root / "recipes")
    try:
        files = importlib.metadata.distribution("vitslim").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.suffix in RECIPE_SUFFIXES and file.parent.parts[-3:] == INSTALLED_RECIPES:
            folder = Path(file.locate()).parent.resolve()
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names and their files (the first folder of :func:`_recipe_dirs` wins)."""
    found: dict[str, Path] = {}
    for folder in _recipe_dirs():
        for suffix in RECIPE_SUFFIXES:
            for path in sorted(folder.glob(f"*{suffix}")):
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    return list(builtin_recipes())


# --------------------------------------------------------------------------- validation


def _unknown_key(key: Any, known: Sequence[str], where: str) -> UserError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return UserError(f"unknown key {key!r} in {where}; {hint}")


def _check_keys(mapping: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise _unknown_key(key, known, where)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a config field's type hint (lists stand for sequences)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is not None and issubclass(origin, Sequence):
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is not None and issubclass(origin, Sequence):
        (item,) = typing.get_args(hint)
        return f"a list of {_describe(item).removeprefix('an ').removeprefix('a ')}s"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _check_fields(cls: type, settings: Mapping[str, Any], where: str, extra: Sequence[str] = ()) -> None:
    """Unknown keys and wrong value types of ``settings`` for the config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    _check_keys(settings, [*extra, *fields], where)
    for name in fields:
        if name in settings and not _matches(settings[name], hints[name]):
            value = settings[name]
            raise UserError(f"{where}: {name} must be {_describe(hints[name])}, got {value!r} ({type(value).__name__})")


def _parse_tokens(settings: Mapping[str, Any], where: str) -> TokenReductionConfig:
    method = settings.get("method", "tome")
    if method not in TOKEN_REDUCERS:
        close = difflib.get_close_matches(str(method), list(TOKEN_REDUCERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{where}: unknown method {method!r} (known: {', '.join(TOKEN_REDUCERS)}){hint}")
    _check_fields(TOKEN_REDUCERS[method], settings, where, extra=("method",))
    try:
        return token_config_from_dict(settings)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _parser(from_dict: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any], str], Any]:
    """A stage parser around a config's ``from_dict``, prefixing its errors with where they are."""

    def parse(settings: Mapping[str, Any], where: str) -> Any:
        try:
            return from_dict(settings)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    return parse


#: stage name -> parser of its settings
STAGE_PARSERS: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
    "tokens": _parse_tokens,
    "sparsity": _parser(SparsityConfig.from_dict),
    "quant": _parser(QuantStage.from_dict),
    "export": _parser(ExportStage.from_dict),
    "validate": _parser(ValidateStage.from_dict),
}


def parse_recipe(data: Any, source: str, default_name: str) -> Recipe:
    """Validate the loaded YAML ``data`` of a recipe read from ``source``."""
    where = f"recipe {source}"
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping with a 'stages' key, got {type(data).__name__}")
    _check_keys(data, RECIPE_KEYS, where)
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{where}: {key} must be a string, got {data[key]!r}")
    stages = data.get("stages")
    if not isinstance(stages, Mapping) or not stages:
        raise UserError(f"{where} needs 'stages': a mapping of one or more of {', '.join(STAGE_ORDER)}")
    _check_keys(stages, STAGE_ORDER, f"{where} (stages)")
    parsed = {}
    for stage in (s for s in STAGE_ORDER if s in stages):
        settings = stages[stage]
        if not isinstance(settings, Mapping):
            raise UserError(f"{where}: stages.{stage} must be a mapping of settings, got {settings!r}")
        parsed[stage] = STAGE_PARSERS[stage](settings, f"{where} (stages.{stage})")
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
    close = difflib.get_close_matches(text, list(builtins), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"unknown recipe {text!r}; {hint}built-in recipes: {', '.join(builtins) or 'none found'} "
        "(or give the path of a .yaml file)"
    )


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name (see :func:`list_recipes`) or a recipe from a YAML file."""
    return parse_recipe(*recipe_source(name_or_path))
