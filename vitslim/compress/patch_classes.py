"""The metaclass of the classes vitslim's reversible patches generate (``mixin + original``).

A generated class lives in its patch module's namespace only once that patch has run in the
process, so pickle's by-name lookup fails in a fresh process (a Ray worker). Generated classes
are instead pickled as their recipe, ``(patch module, mixin, original class)``, and rebuilt there
by that module's ``_patched_class`` (nested patches rebuild recursively).
"""

from __future__ import annotations

import copyreg
import importlib

__all__ = ["PatchedClass"]


class PatchedClass(type):
    """Metaclass of a generated ``mixin + original`` class; its module defines ``_patched_class``."""


def _rebuild(module: str, mixin: type, original: type) -> type:
    return importlib.import_module(module)._patched_class(original, mixin)


def _reduce(cls: PatchedClass) -> tuple:
    mixin, original = cls.__bases__
    return _rebuild, (cls.__module__, mixin, original)


copyreg.pickle(PatchedClass, _reduce)
