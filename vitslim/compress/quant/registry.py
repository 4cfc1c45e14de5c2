"""String-keyed quantizer registry (in the style of timm's model registry).

>>> from vitslim.compress.quant import create_quantizer, list_quantizers
>>> list_quantizers("log*")
['log2', 'logsqrt2']
>>> q = create_quantizer("adalog", bits=4)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from vitslim.registry import Registry

from .base import Quantizer

__all__ = [
    "register_quantizer",
    "create_quantizer",
    "list_quantizers",
    "get_quantizer_class",
    "is_quantizer",
    "quantizer_from_config",
]

_REGISTRY: Registry[type[Quantizer]] = Registry("quantizer")

Q = TypeVar("Q", bound=type[Quantizer])


def register_quantizer(name: str) -> Callable[[Q], Q]:
    """Class decorator registering a :class:`Quantizer` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("quantizer name must be a non-empty string")

    def deco(cls: Q) -> Q:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"@register_quantizer({name!r}) expects a Quantizer subclass")
        cls.registry_name = name
        return _REGISTRY.register(name, cls)

    return deco


def list_quantizers(pattern: str = "*") -> list[str]:
    """Sorted names of the registered quantizers matching an fnmatch ``pattern``."""
    return _REGISTRY.matching(pattern)


def is_quantizer(name: str) -> bool:
    return name in _REGISTRY


def get_quantizer_class(name: str) -> type[Quantizer]:
    """The class registered under ``name``; :class:`~vitslim.errors.UserError` naming the
    closest matches when it is unknown."""
    return _REGISTRY[name]


def create_quantizer(name: str, bits: int = 8, **options: Any) -> Quantizer:
    """Build the quantizer registered as ``name`` with ``bits`` and its ``options``."""
    return get_quantizer_class(name)(bits=bits, **options)


def quantizer_from_config(config: Mapping[str, Any]) -> Quantizer:
    """Rebuild an (uncalibrated) quantizer from :meth:`Quantizer.config`; load its
    ``state_dict`` afterwards to restore the calibrated parameters."""
    return create_quantizer(config["name"], bits=config["bits"], **dict(config.get("options", {})))
