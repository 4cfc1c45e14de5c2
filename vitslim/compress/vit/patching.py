"""Reversible class patches of a timm ViT, shared by the token-reduction and quantization patches.

A patch swaps a module's class for a generated subclass ``mixin + class`` (``isinstance`` still
holds) that names the original class in a marker attribute, so the patch can be undone and the
class under any stack of patches found (:func:`unpatched_class`).

Token reduction is the *outer* patch: its forwards route through the shared explicit attention
(:mod:`.attention`), so it must sit on top of the quantization patch. A patch that swaps classes
under it lifts it first and puts it back after (:func:`beneath_outer_patch`). The outer patch also
carries per-forward state between blocks (token sizes) that a piecewise run of the blocks must
restore (:func:`outer_patch`).
"""

from __future__ import annotations

import contextlib
import copyreg
import importlib
import sys
from collections.abc import Iterator
from typing import Protocol

from torch import Tensor, nn

from vitslim.errors import UserError

__all__ = [
    "TOKEN_PATCH",
    "QUANT_PATCH",
    "OUTER_PATCH",
    "OuterPatch",
    "PatchedClass",
    "patched_class",
    "restore_class",
    "unpatched_class",
    "has_patch",
    "check_vit",
    "outer_patch",
    "beneath_outer_patch",
]

#: Class attribute naming the class the token-reduction patch subclassed.
TOKEN_PATCH = "_tr_original_class"
#: Class attribute naming the class the quantization patch subclassed.
QUANT_PATCH = "_vq_original_class"
#: Model attribute holding the outer patch's state (see :class:`OuterPatch`).
OUTER_PATCH = "_vs_outer_patch"
#: Class attribute of a generated class: how to rebuild it (marker, prefix, home module).
_RECIPE = "_vs_patch_recipe"


class OuterPatch(Protocol):
    """The state of the outermost patch of a model (token reduction's)."""

    #: token sizes [B, N, 1] entering the next block of the running forward (None: all ones)
    size: Tensor | None

    def begin(self) -> None:
        """Reset the per-forward state (as a new forward does)."""

    def remove(self, model: nn.Module) -> None:
        """Undo the patch on ``model``."""

    def reapply(self, model: nn.Module) -> None:
        """Apply the same patch to ``model`` again."""


class PatchedClass(type):
    """Metaclass of the generated ``mixin + original`` classes. A generated class lives on its
    ``home`` module only once the patch has run in the process, so pickle's by-name lookup fails in
    a fresh process (a Ray worker): these classes pickle as their recipe and are rebuilt there by
    :func:`patched_class` (nested patches rebuild recursively)."""


def patched_class(cls: type, mixin: type, marker: str, prefix: str, home: str) -> type:
    """The generated subclass ``mixin + cls`` marked with ``marker`` (``cls`` itself when it is
    one already), cached as ``<prefix>_<class path>`` on the module ``home`` so models stay
    picklable."""
    if marker in vars(cls):
        return cls
    name = f"{prefix}_{cls.__module__.replace('.', '_')}_{cls.__qualname__.replace('.', '_')}"
    module = sys.modules[home]
    new = getattr(module, name, None)
    if new is None or vars(new).get(marker) is not cls:
        namespace = {marker: cls, _RECIPE: (marker, prefix, home), "__module__": home, "__qualname__": name}
        new = PatchedClass(name, (mixin, cls), namespace)
        setattr(module, name, new)
    return new


def _rebuild(home: str, cls: type, mixin: type, marker: str, prefix: str) -> type:
    importlib.import_module(home)  # the patch's module, where its mixins live
    return patched_class(cls, mixin, marker, prefix, home)


def _reduce(new: PatchedClass) -> tuple:
    mixin, cls = new.__bases__
    marker, prefix, home = vars(new)[_RECIPE]
    return _rebuild, (home, cls, mixin, marker, prefix)


copyreg.pickle(PatchedClass, _reduce)


def restore_class(module: nn.Module, marker: str) -> None:
    """Put back the class a ``marker`` patch replaced on ``module`` (nothing when it is not patched)."""
    original = vars(type(module)).get(marker)
    if original is not None:
        module.__class__ = original


def unpatched_class(cls: type) -> type:
    """The class under vitslim's generated patch subclasses."""
    while True:
        base = next((vars(cls)[m] for m in (TOKEN_PATCH, QUANT_PATCH) if m in vars(cls)), None)
        if base is None:
            return cls
        cls = base


def has_patch(model: nn.Module, marker: str) -> bool:
    """Whether a module of ``model`` carries the ``marker`` patch."""
    return any(marker in vars(type(m)) for m in model.modules())


def check_vit(model: nn.Module, what: str, error: type[UserError] = UserError) -> None:
    """``error`` unless ``model`` is a timm VisionTransformer of timm Blocks and Attentions
    (patched or not); ``what`` names the feature in the message."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise error(f"{what} supports timm VisionTransformer models, not {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        blk_cls, attn_cls = unpatched_class(type(blk)), unpatched_class(type(blk.attn))
        if not isinstance(blk, Block) or blk_cls.forward is not Block.forward:
            raise error(f"block {i} is a {blk_cls.__name__}; {what} supports timm Block only")
        if not isinstance(blk.attn, Attention) or attn_cls.forward is not Attention.forward:
            raise error(f"block {i} uses {attn_cls.__name__}; {what} supports timm Attention only")


def outer_patch(model: nn.Module) -> OuterPatch | None:
    """The state of ``model``'s outer patch, None when it has none."""
    return model.__dict__.get(OUTER_PATCH)


@contextlib.contextmanager
def beneath_outer_patch(model: nn.Module) -> Iterator[None]:
    """Lift the outer patch (if any) while classes are swapped inside the ``with``, then apply it
    again on top, so its forwards stay outermost."""
    state = outer_patch(model)
    if state is None:
        yield
        return
    state.remove(model)
    try:
        yield
    finally:
        state.reapply(model)
