"""Which Linear layers a :class:`~.config.SparsityConfig` sparsifies.

A layer whose ``in_features`` is not a multiple of 4 cannot hold the 2:4 pattern: when only the
default include patterns select it, it is skipped with the reason recorded in the report; when a
pattern the user wrote selects it, that is a :class:`UserError` naming the layer.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field

from torch import nn

from vitslim.config import suggest
from vitslim.errors import UserError

from .config import DEFAULT_INCLUDE, SparsityConfig
from .pattern import GROUP

__all__ = ["Selection", "matches", "select_layers"]


@dataclass
class Selection:
    """Selected Linear layers by name (forward order of ``named_modules``), and skipped ones with why."""

    layers: dict[str, nn.Linear] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(model: nn.Module, cfg: SparsityConfig) -> Selection:
    """The Linear layers matching ``cfg.include`` and no ``cfg.exclude`` pattern (see the module
    docstring for layers that cannot hold the pattern). Patterns matching no Linear are warned
    about; selecting nothing at all is a :class:`UserError`."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for kind, patterns in (("include", cfg.include), ("exclude", cfg.exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in linears):
                warnings.warn(
                    f"sparsity {kind} pattern {pattern!r} matches no Linear layer{suggest(pattern, linears)}",
                    stacklevel=3,
                )
    selection = Selection()
    for name, layer in linears.items():
        if not matches(name, cfg.include) or matches(name, cfg.exclude):
            continue
        if layer.in_features % GROUP:
            reason = f"in_features {layer.in_features} is not a multiple of {GROUP}"
            if cfg.include != DEFAULT_INCLUDE:
                raise UserError(f"layer {name!r} cannot be 2:4 sparse ({reason}); add it to 'exclude'")
            selection.skipped[name] = reason
        else:
            selection.layers[name] = layer
    if not selection.layers:
        raise UserError(
            f"no Linear layer to sparsify: include {list(cfg.include)}, exclude {list(cfg.exclude)}"
            + (f", skipped {selection.skipped}" if selection.skipped else "")
        )
    return selection
