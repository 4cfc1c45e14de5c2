"""String-keyed registry of 2:4 mask methods, each turning one Linear weight into a 2:4 one.

``magnitude`` keeps the 2 largest ``|W_ij|`` per group, ``wanda`` the 2 largest ``|W_ij|·‖X_j‖₂``
(Sun et al., 2023; ``‖X_j‖₂``: the norm of input feature ``j`` over the calibration tokens, the
square root of the Hessian diagonal), ``sparsegpt`` chooses the mask and updates the kept weights
from the full Hessian (:mod:`.sparsegpt`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from vitslim.registry import Registry

from .pattern import mask_24
from .sparsegpt import sparsegpt_24

__all__ = ["SparsityMethod", "register_sparsity_method", "get_sparsity_method", "list_sparsity_methods"]

#: ``(weight [out, in], Hessian XᵀX [in, in] or None, dampening, block_size) -> 2:4 weight``
PruneFn = Callable[[Tensor, "Tensor | None", float, int], Tensor]


@dataclass(frozen=True)
class SparsityMethod:
    """A registered method: its prune function and whether it needs calibration data."""

    name: str
    prune: PruneFn
    needs_data: bool


_METHODS: Registry[SparsityMethod] = Registry("sparsity method")


def register_sparsity_method(name: str, needs_data: bool) -> Callable[[PruneFn], PruneFn]:
    """Decorator registering ``prune`` under ``name``."""

    def register(prune: PruneFn) -> PruneFn:
        _METHODS.register(name, SparsityMethod(name, prune, needs_data))
        return prune

    return register


def get_sparsity_method(name: str) -> SparsityMethod:
    """The method called ``name`` (:class:`UserError` with suggestions when unknown)."""
    return _METHODS[name]


def list_sparsity_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching the fnmatch ``pattern``."""
    return _METHODS.matching(pattern)


@register_sparsity_method("magnitude", needs_data=False)
def magnitude(weight: Tensor, hessian: Tensor | None, dampening: float, block_size: int) -> Tensor:
    """Zero the 2 smallest ``|W_ij|`` of every group of 4."""
    return weight * mask_24(weight.abs())


@register_sparsity_method("wanda", needs_data=True)
def wanda(weight: Tensor, hessian: Tensor | None, dampening: float, block_size: int) -> Tensor:
    """Zero the 2 smallest ``|W_ij|·‖X_j‖₂`` of every group of 4."""
    norms = hessian.diagonal().clamp_min(0).sqrt().to(weight.dtype)
    return weight * mask_24(weight.abs() * norms)


@register_sparsity_method("sparsegpt", needs_data=True)
def sparsegpt(weight: Tensor, hessian: Tensor | None, dampening: float, block_size: int) -> Tensor:
    """SparseGPT mask selection with OBS reconstruction of the kept weights."""
    return sparsegpt_24(weight, hessian, dampening, block_size)
