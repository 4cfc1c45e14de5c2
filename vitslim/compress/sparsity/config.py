"""Plain-data 2:4 sparsity config, parsed from a recipe stage ``sparsity: {method: sparsegpt, ...}``.

>>> cfg = SparsityConfig("wanda", exclude=("blocks.0.*",))
>>> SparsityConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vitslim.config import check_flag, check_keys, check_renamed
from vitslim.errors import UserError

from .methods import get_sparsity_method
from .pattern import GROUP

__all__ = ["DEFAULT_INCLUDE", "SparsityConfig"]

#: Linear layers sparsified by default: every one inside the transformer blocks (not the head).
DEFAULT_INCLUDE = ("blocks.*",)


def _patterns(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise UserError(f"sparsity '{name}' must be a layer-name pattern or a list of them, got {value!r}")
    return tuple(value)


def _integer(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"sparsity '{name}' must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SparsityConfig:
    """How to make Linear weights 2:4 sparse along their input dimension.

    ``method``: a registered method (``magnitude``, ``wanda``, ``sparsegpt``). ``include`` /
    ``exclude``: fnmatch patterns of Linear module names (``"blocks.*"``, ``"*.attn.qkv"``); a
    layer is sparsified when it matches an include pattern and no exclude pattern. ``dampening``:
    SparseGPT's diagonal dampening as a fraction of the mean Hessian diagonal (0.01 = 1%).
    ``block_size``: SparseGPT's column block (a multiple of 4). ``images``: calibration images
    used at most (a seeded subset when more are given); ignored by ``magnitude``. ``sequential``:
    calibrate each block on the already-sparsified model (SparseGPT's scheme; False: every layer
    on the dense model's inputs, one pass).
    """

    method: str = "sparsegpt"
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    dampening: float = 0.01
    block_size: int = 128
    images: int = 128
    sequential: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise UserError(f"sparsity 'method' must be a string, got {self.method!r}")
        get_sparsity_method(self.method)
        object.__setattr__(self, "include", _patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude"))
        if not self.include:
            raise UserError("sparsity 'include' needs at least one layer-name pattern")
        if isinstance(self.dampening, bool) or not isinstance(self.dampening, (int, float)):
            raise UserError(f"sparsity 'dampening' must be a number, got {self.dampening!r}")
        if not 0 <= self.dampening <= 1:
            raise UserError(
                f"sparsity 'dampening' is a fraction of the mean Hessian diagonal in [0, 1], got {self.dampening}"
            )
        object.__setattr__(self, "dampening", float(self.dampening))
        _integer(self.block_size, "block_size", GROUP)
        if self.block_size % GROUP:
            raise UserError(f"sparsity 'block_size' must be a multiple of {GROUP}, got {self.block_size}")
        _integer(self.images, "images", 1)
        check_flag(self.sequential, "sparsity 'sequential'")

    @property
    def needs_data(self) -> bool:
        """Whether the method needs calibration images."""
        return get_sparsity_method(self.method).needs_data

    def describe(self) -> str:
        """A short human description, e.g. ``2:4 sparsegpt``."""
        return f"2:4 {self.method}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SparsityConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are errors."""
        check_renamed(data, {"samples": "'images' (calibration images)"})
        return cls(**check_keys(data, [f.name for f in dataclasses.fields(cls)]))
