"""Checking plain-data settings, with one wording for every config, stage and recipe.

>>> check_keys({"imags": 8}, ("images", "search"))
Traceback (most recent call last):
...
vitslim.errors.UserError: unknown key 'imags'; did you mean 'images'? (allowed: images, search)

Unknown keys read ``unknown key K[ in WHERE]; did you mean ...? (allowed: ...)``, unknown names
``unknown WHAT V; did you mean ...? (available: ...)``; where a caller already says where the
settings are (a recipe prefixes ``recipe FILE (stages.NAME):``), ``where`` is left out.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vitslim.errors import UserError

__all__ = ["suggest", "check_keys", "check_renamed", "check_choice", "check_flag", "check_fields"]

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def suggest(word: Any, choices: Iterable[str]) -> str:
    """A ``; did you mean 'x'?`` hint naming the closest ``choices`` (empty when none is close)."""
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_keys(data: Any, allowed: Iterable[str], where: str = "") -> Mapping[str, Any]:
    """``data`` itself when it is a mapping whose keys are all ``allowed``; a UserError otherwise."""
    allowed = list(allowed)
    if not isinstance(data, Mapping):
        raise UserError(f"{where or 'settings'} must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            at = f" in {where}" if where else ""
            raise UserError(f"unknown key {key!r}{at}{suggest(key, allowed)} (allowed: {', '.join(allowed)})")
    return data


def check_renamed(data: Mapping[str, Any], renamed: Mapping[str, str], where: str = "") -> None:
    """A UserError for a key of ``data`` that ``renamed`` maps to its new name (old recipes)."""
    for old, new in renamed.items():
        if old in data:
            at = f" in {where}" if where else ""
            raise UserError(f"key {old!r}{at} was renamed: write {new} instead")


def check_choice(what: str, value: Any, choices: Iterable[str]) -> Any:
    """``value`` when it is one of ``choices``; a UserError naming the closest ones otherwise."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"unknown {what} {value!r}{suggest(value, choices)} (available: {', '.join(choices)})")
    return value


def check_flag(value: Any, name: str) -> bool:
    """``value`` when it is a bool; a UserError otherwise."""
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")
    return value


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a config field's type hint (lists stand for sequences)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is not None and issubclass(origin, Sequence):
        (item,) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
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


def check_fields(cls: type, data: Any, where: str = "", extra: Sequence[str] = ()) -> Mapping[str, Any]:
    """``data`` when its keys are fields of the dataclass ``cls`` (or ``extra``) and its values
    fit their type hints; a UserError otherwise."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    check_keys(data, [*extra, *fields], where)
    for name in fields:
        if name in data and not _matches(data[name], hints[name]):
            value = data[name]
            raise UserError(f"{name} must be {_describe(hints[name])}, got {value!r} ({type(value).__name__})")
    return data
