"""The reversible quantization patch: fake-quant hook points on a timm ViT's sites.

Each configured site gets a :class:`QuantPoint` (its quantizer plus an ``enabled`` flag),
registered as a submodule next to what it quantizes, so ``state_dict()`` carries the
quantizer parameters:

* Linear / patch-embed conv: ``<module>.input_quant`` and ``<module>.weight_quant``; the
  module's class is swapped for a generated subclass (``isinstance`` still holds) whose
  forward fake-quantizes the input and the weight before ``F.linear`` / the convolution;
* attention: ``attn.q_quant``, ``k_quant``, ``softmax_quant``, ``v_quant``, used by
  :func:`~vitslim.compress.quant.attention.explicit_attention` (the attention class is swapped
  for one running it; timm's own forward runs while no point is enabled).

With every point disabled (:func:`quantization_disabled`) the forwards compute exactly what
the unpatched modules compute; :func:`remove_quantization` deletes the points and restores
the classes. Token reduction (``vitslim.compress.tokens``) composes in either order: its
attention forward calls the same explicit path, and this patch always sits under it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import sys
from collections.abc import Iterator, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from vitslim.compress.patch_classes import PatchedClass
from vitslim.errors import UserError

from .attention import ATTENTION_POINTS, TAP, QuantAttentionMixin
from .base import Quantizer
from .config import SiteSpec, kind_options, suggest
from .logarithmic import GELU_SHIFT
from .sites import Site, find_sites

__all__ = [
    "QuantPoint",
    "apply_quantization",
    "remove_quantization",
    "is_quantized",
    "quant_points",
    "quantization_info",
    "point_owner",
    "set_quantization_enabled",
    "quantization_disabled",
]

_ORIG = "_vq_original_class"
#: Model attribute holding how ``quantize_`` ran (plain data).
INFO = "_vq_info"
#: Hook-point attribute name per site slot.
POINT_ATTRS = {"input": "input_quant", "weight": "weight_quant", **ATTENTION_POINTS}


class QuantPoint(nn.Module):
    """One site's fake quantizer; the identity while ``enabled`` is False."""

    def __init__(self, site: str, kind: str, quantizer: Quantizer) -> None:
        super().__init__()
        self.site = site
        self.kind = kind
        self.quantizer = quantizer
        self.enabled = False

    def forward(self, x: Tensor) -> Tensor:
        return self.quantizer(x) if self.enabled else x

    def extra_repr(self) -> str:
        return f"site={self.site!r}, kind={self.kind!r}, enabled={self.enabled}"


class _QuantLinear:
    """Mixin for ``nn.Linear``: fake-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        inp, wq = self._modules.get("input_quant"), self._modules.get("weight_quant")
        x = x if inp is None else inp(x)
        return F.linear(x, self.weight if wq is None else wq(self.weight), self.bias)


class _QuantConv2d:
    """Mixin for ``nn.Conv2d`` (the patch embedding): fake-quantized weight."""

    def forward(self, x: Tensor) -> Tensor:
        wq = self._modules.get("weight_quant")
        return self._conv_forward(x, self.weight if wq is None else wq(self.weight), self.bias)


def _mixin_for(module: nn.Module) -> type:
    if isinstance(module, nn.Linear):
        return _QuantLinear
    if isinstance(module, nn.Conv2d):
        return _QuantConv2d
    return QuantAttentionMixin


def _patched_class(cls: type, mixin: type) -> type:
    """The generated subclass ``mixin + cls``, cached on this module so models stay picklable."""
    if _ORIG in vars(cls):
        return cls
    name = f"Quant_{cls.__module__.replace('.', '_')}_{cls.__qualname__.replace('.', '_')}"
    module = sys.modules[__name__]
    new = getattr(module, name, None)
    if new is None or vars(new).get(_ORIG) is not cls:
        new = PatchedClass(name, (mixin, cls), {_ORIG: cls, "__module__": __name__, "__qualname__": name})
        setattr(module, name, new)
    return new


@contextlib.contextmanager
def _under_token_reduction(model: nn.Module) -> Iterator[None]:
    """Lift token reduction (if any) while classes are swapped, then re-apply it on top, so its
    forwards (which route through the shared explicit attention) stay outermost."""
    from vitslim.compress.tokens.patch import apply_token_reduction, remove_token_reduction, token_reduction_state

    state = token_reduction_state(model)
    if state is None:
        yield
        return
    remove_token_reduction(model)
    try:
        yield
    finally:
        apply_token_reduction(model, state.config)


def _post_gelu_shift(model: nn.Module, site: Site) -> float:
    """Shift an unsigned fc2-input quantizer needs: none once the shift is folded (``reparam``)."""
    mlp = model.get_submodule(site.module.rpartition(".")[0])
    return 0.0 if getattr(mlp.act, "gelu_shift", None) is not None else GELU_SHIFT


def build_quantizer(model: nn.Module, site: Site, spec: SiteSpec, seed: int = 0) -> Quantizer:
    """The (uncalibrated) quantizer of ``spec`` on ``site`` (kind defaults, GELU shift, seed)."""
    options = {"seed": seed, **kind_options(site.kind, spec)}
    if site.kind == "post_gelu" and spec.unsigned and "shift" not in options:
        options["shift"] = _post_gelu_shift(model, site)
    return SiteSpec(spec.quantizer, spec.bits, options).build()


def install_points(model: nn.Module, quantizers: Mapping[Site, Quantizer]) -> dict[str, QuantPoint]:
    """Attach a disabled :class:`QuantPoint` per site and swap the owning modules' classes."""
    if is_quantized(model):
        raise UserError("model is already quantized: call remove_quantization(model) first")
    points: dict[str, QuantPoint] = {}
    with _under_token_reduction(model):
        for site, quantizer in quantizers.items():
            owner = model.get_submodule(site.module)
            owner.__class__ = _patched_class(type(owner), _mixin_for(owner))
            point = QuantPoint(site.name, site.kind, quantizer)
            param = next(owner.parameters(), None)
            owner.add_module(POINT_ATTRS[site.slot], point if param is None else point.to(param.device))
            points[site.name] = point
    return points


def apply_quantization(
    model: nn.Module, specs: Mapping[str, SiteSpec | None], *, seed: int = 0
) -> dict[str, QuantPoint]:
    """Place uncalibrated, disabled quantizers on the sites named in ``specs`` (``None``: float).

    Returns the points by site name; :func:`~vitslim.compress.quant.apply.quantize_` places and
    calibrates in one call.
    """
    sites = {s.name: s for s in find_sites(model)}
    unknown = [name for name in specs if name not in sites]
    if unknown:
        raise UserError(f"not a site of this model: {unknown[:5]}{suggest(unknown[0], sites)}")
    quantizers = {sites[n]: build_quantizer(model, sites[n], s, seed) for n, s in specs.items() if s is not None}
    return install_points(model, quantizers)


def remove_quantization(model: nn.Module) -> nn.Module:
    """Undo the patch: points deleted, original classes back (reparameterisations stay)."""
    model.__dict__.pop(INFO, None)
    with _under_token_reduction(model):
        for module in model.modules():
            for attr in POINT_ATTRS.values():
                if isinstance(module._modules.get(attr), QuantPoint):
                    del module._modules[attr]
            if TAP in module.__dict__:
                delattr(module, TAP)
            orig = vars(type(module)).get(_ORIG)
            if orig is not None:
                module.__class__ = orig
    return model


def quantization_info(model: nn.Module) -> dict | None:
    """How ``quantize_`` quantized ``model`` (config, search settings, per-site output errors)."""
    return model.__dict__.get(INFO)


def quant_points(model: nn.Module) -> dict[str, QuantPoint]:
    """The model's points by site name, in module order."""
    return {m.site: m for m in model.modules() if isinstance(m, QuantPoint)}


def point_owner(model: nn.Module, point: QuantPoint) -> nn.Module:
    """The module a point belongs to (the Linear, conv or attention)."""
    return model.get_submodule(point.site.rpartition(".")[0])


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantPoint) for m in model.modules())


def set_quantization_enabled(model: nn.Module, enabled: bool = True, pattern: str = "*") -> int:
    """Turn the points whose site matches ``pattern`` on or off; returns how many."""
    points = [p for name, p in quant_points(model).items() if fnmatch.fnmatchcase(name, pattern)]
    for p in points:
        p.enabled = bool(enabled)
    return len(points)


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the float model inside the ``with`` (every point off), restoring the flags after."""
    points = list(quant_points(model).values())
    flags = [p.enabled for p in points]
    for p in points:
        p.enabled = False
    try:
        yield model
    finally:
        for p, flag in zip(points, flags, strict=True):
            p.enabled = flag
