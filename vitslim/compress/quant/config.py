"""Plain-data quantization configs: which quantizer and bits per site kind, with overrides.

>>> cfg = QuantConfig.uniform(4, 4)                                  # W4A4, uniform everywhere
>>> cfg = QuantConfig.log(4, 4, softmax="adalog", gelu="adalog")     # + AdaLog, LN reparam
>>> cfg = dataclasses.replace(cfg, overrides={"head.*": None})       # keep the head float
>>> QuantConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vitslim.config import check_choice, check_flag, check_keys, suggest
from vitslim.errors import UserError

from .base import UnsignedQuantizer
from .registry import create_quantizer, get_quantizer_class
from .sites import ACTIVATION_KINDS, SITE_KINDS, Site
from .uniform import UniformQuantizer

__all__ = ["SiteSpec", "QuantConfig", "LN_TARGETS", "PRESETS", "kind_options"]

#: Target statistics of the post-LayerNorm reparameterisation (see ``reparam.py``).
LN_TARGETS = ("mean", "median", "mad")
#: Options every weight quantizer starts from: symmetric (zero stays zero), per output channel.
WEIGHT_OPTIONS = {"symmetric": True, "channel_axis": 0}
#: Kinds whose values are non-negative (after the GELU shift): the only ones unsigned
#: quantizers (log2, logsqrt2, adalog, tanq, twin_uniform) may be placed on.
UNSIGNED_KINDS = ("post_softmax", "post_gelu")
#: Quantizers allowed on weights (zero stays exactly zero: uniform ones when symmetric, fp8 always).
WEIGHT_QUANTIZERS = ("uniform", "fp8")


def kind_options(kind: str, spec: SiteSpec) -> dict[str, Any]:
    """The quantizer options of ``spec`` on a site of ``kind`` (weight defaults filled in)."""
    return {**WEIGHT_OPTIONS, **spec.options} if kind == "weight" else dict(spec.options)


@dataclass(frozen=True)
class SiteSpec:
    """A quantizer name from the registry, its bits and constructor options."""

    quantizer: str
    bits: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_quantizer_class(self.quantizer)  # UserError with suggestions when unknown
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise UserError(f"options of quantizer {self.quantizer!r} must be a mapping with string keys")
        object.__setattr__(self, "options", dict(self.options))
        self.build()  # bad bits / options fail here, not in the middle of calibration

    @property
    def unsigned(self) -> bool:
        """Whether the quantizer only represents non-negative values."""
        return issubclass(get_quantizer_class(self.quantizer), UnsignedQuantizer)

    def build(self, **options: Any):
        """A fresh (uncalibrated) quantizer; ``options`` are added under the spec's own."""
        try:
            return create_quantizer(self.quantizer, self.bits, **{**options, **self.options})
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad quantizer spec {self.quantizer!r} with {self.bits} bits: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"quantizer": self.quantizer, "bits": self.bits, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "site spec") -> SiteSpec | None:
        """``{"quantizer": name, "bits": b, "options": {...}}``; ``None`` keeps the sites float."""
        if data is None:
            return None
        check_keys(data, ("quantizer", "bits", "options"), where)
        if "quantizer" not in data or "bits" not in data:
            raise UserError(f"{where} needs 'quantizer' and 'bits'")
        return cls(data["quantizer"], data["bits"], data.get("options") or {})


def _uniform(bits: int) -> SiteSpec:
    return SiteSpec("uniform", bits)


def _trt_activation() -> SiteSpec:
    """Symmetric int8 over QuantizeLinear's whole range: TensorRT's explicit INT8 activations."""
    return SiteSpec("uniform", 8, {"symmetric": True, "narrow": False})


def _weight(bits: int) -> SiteSpec:
    return SiteSpec("uniform", bits, dict(WEIGHT_OPTIONS))


def _fp8(options: Mapping[str, Any] | None = None) -> SiteSpec:
    return SiteSpec("fp8", 8, dict(options or {}))


@dataclass(frozen=True)
class QuantConfig:
    """Quantizer per site kind (``None``: keep float) plus per-site ``overrides``.

    ``overrides`` maps fnmatch patterns of site names (``"head.*"``, ``"blocks.0.attn.softmax"``)
    to a spec or ``None``; when several match, the last one wins. ``ln_reparam`` folds
    channel-wise post-LayerNorm ranges into the LayerNorm and the next Linear (RepQ-ViT) with
    the target ``"mean"``, ``"median"`` or ``"mad"`` (see ``reparam.py``); ``attn_reparam`` does the
    same for the attention outputs (``proj``'s input, folded into v and ``proj``); ``gelu_shift``
    folds the post-GELU shift into fc2's bias (AdaLog); ``qk_rotation`` rotates q and k of every
    head by one orthogonal (Hadamard) matrix folded into ``qkv`` (q·kᵀ unchanged, outlier
    channels spread before the per-tensor q and k quantizers). ``max_weight_bits`` caps the bits
    of every weight site (7: int8 kernels without VNNI compute exactly, see
    :func:`vitslim.evaluate.environment.int8_saturates`). The default is W8A8 uniform.
    """

    weight: SiteSpec | None = _weight(8)
    post_ln: SiteSpec | None = _uniform(8)
    post_gelu: SiteSpec | None = _uniform(8)
    post_softmax: SiteSpec | None = _uniform(8)
    qk: SiteSpec | None = _uniform(8)
    v: SiteSpec | None = _uniform(8)
    generic: SiteSpec | None = _uniform(8)
    overrides: Mapping[str, SiteSpec | None] = field(default_factory=dict)
    ln_reparam: str | None = None
    attn_reparam: str | None = None
    gelu_shift: bool = False
    qk_rotation: bool = False
    max_weight_bits: int | None = None

    def __post_init__(self) -> None:
        for kind in SITE_KINDS:
            spec = getattr(self, kind)
            if spec is not None:
                _check_spec(kind, spec, kind)
        if not isinstance(self.overrides, Mapping):
            raise UserError("overrides must map site-name patterns to specs (or None)")
        for pattern, spec in self.overrides.items():
            if not isinstance(pattern, str) or not (spec is None or isinstance(spec, SiteSpec)):
                raise UserError(f"override {pattern!r} must map a string pattern to a SiteSpec or None")
        object.__setattr__(self, "overrides", dict(self.overrides))
        if self.ln_reparam is not None:
            check_choice("ln_reparam target", self.ln_reparam, LN_TARGETS)
            if self.post_ln is None or not issubclass(get_quantizer_class(self.post_ln.quantizer), UniformQuantizer):
                raise UserError("ln_reparam needs a uniform post_ln quantizer (it makes its ranges per-tensor)")
        if self.attn_reparam is not None:
            check_choice("attn_reparam target", self.attn_reparam, LN_TARGETS)
        for flag in ("gelu_shift", "qk_rotation"):
            check_flag(getattr(self, flag), flag)
        cap = self.max_weight_bits
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 2 <= cap <= 8):
            raise UserError(f"max_weight_bits must be an integer in [2, 8] or null, got {cap!r}")

    # ------------------------------------------------------------------ resolving
    def spec_for(self, site: Site) -> SiteSpec | None:
        """The spec of one site: its kind's, then every matching override (last wins)."""
        spec = getattr(self, site.kind)
        for pattern, override in self.overrides.items():
            if fnmatch.fnmatchcase(site.name, pattern):
                spec = override
        if spec is not None:
            _check_spec(site.kind, spec, f"site {site.name!r}")
        cap = self.max_weight_bits
        capped = spec is not None and spec.quantizer == "uniform" and cap is not None and spec.bits > cap
        if capped and site.kind == "weight":
            spec = dataclasses.replace(spec, bits=cap)
        return spec

    def resolve(self, sites: Iterable[Site]) -> dict[str, SiteSpec | None]:
        """Spec per site name; warns about override patterns that match no site."""
        sites = list(sites)
        for pattern in self.overrides:
            if not any(fnmatch.fnmatchcase(s.name, pattern) for s in sites):
                hint = suggest(pattern, [s.name for s in sites])
                warnings.warn(f"quantization override {pattern!r} matches no site{hint}", stacklevel=2)
        return {s.name: self.spec_for(s) for s in sites}

    # -------------------------------------------------------------------- presets
    @classmethod
    def uniform(cls, w_bits: int = 8, a_bits: int = 8, **changes: Any) -> QuantConfig:
        """Uniform everywhere: symmetric per-channel weights, asymmetric per-tensor activations."""
        a = _uniform(a_bits)
        base = cls(weight=_weight(w_bits), post_ln=a, post_gelu=a, post_softmax=a, qk=a, v=a, generic=a)
        return dataclasses.replace(base, **changes)

    @classmethod
    def log(
        cls,
        w_bits: int,
        a_bits: int,
        *,
        softmax: str = "adalog",
        gelu: str | None = "adalog",
        ln_reparam: str | None = "mean",
        **changes: Any,
    ) -> QuantConfig:
        """Uniform, plus the ``softmax`` quantizer on post-softmax maps, the ``gelu`` quantizer on
        post-GELU inputs (shift folded into fc2; ``None`` keeps them uniform) and the post-LN
        reparameterisation with target ``ln_reparam``."""
        return cls.uniform(
            w_bits,
            a_bits,
            post_softmax=SiteSpec(softmax, a_bits),
            post_gelu=SiteSpec(gelu, a_bits) if gelu else _uniform(a_bits),
            gelu_shift=gelu is not None,
            ln_reparam=ln_reparam,
            **changes,
        )

    @classmethod
    def preset(cls, name: str) -> QuantConfig:
        """A named preset: one of :data:`PRESETS`."""
        return PRESETS[check_choice("quantization preset", name, PRESETS)]()

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: None if getattr(self, k) is None else getattr(self, k).to_dict() for k in SITE_KINDS}
        out["overrides"] = {p: None if s is None else s.to_dict() for p, s in self.overrides.items()}
        out["ln_reparam"] = self.ln_reparam
        out["attn_reparam"] = self.attn_reparam
        out["gelu_shift"] = self.gelu_shift
        out["qk_rotation"] = self.qk_rotation
        out["max_weight_bits"] = self.max_weight_bits
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantConfig:
        """Inverse of :meth:`to_dict`; missing kinds keep their defaults, unknown keys are errors."""
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(data, names, "quantization config")
        kw: dict[str, Any] = {k: SiteSpec.from_dict(data[k], f"'{k}'") for k in SITE_KINDS if k in data}
        if "overrides" in data:
            overrides = data["overrides"] or {}
            if not isinstance(overrides, Mapping):
                raise UserError("'overrides' must map site-name patterns to specs (or null)")
            kw["overrides"] = {p: SiteSpec.from_dict(s, f"override {p!r}") for p, s in overrides.items()}
        for key in ("ln_reparam", "attn_reparam", "gelu_shift", "qk_rotation", "max_weight_bits"):
            if key in data:
                kw[key] = data[key]
        return cls(**kw)


def _check_spec(kind: str, spec: SiteSpec, where: str) -> None:
    if not isinstance(spec, SiteSpec):
        raise UserError(f"{where} must be a SiteSpec or None, got {type(spec).__name__}")
    if kind == "weight":
        opts = kind_options(kind, spec)
        if spec.quantizer not in WEIGHT_QUANTIZERS or not opts.get("symmetric", False):
            raise UserError(
                f"{where}: weights need a symmetric uniform (or fp8) quantizer so that zeros stay zero "
                f"(2:4 sparsity relies on it), got {spec.quantizer!r} with options {spec.options}"
            )
    elif spec.options.get("channel_axis") not in (None, -1):
        raise UserError(f"{where}: per-channel activation quantizers use channel_axis -1 (the feature axis)")
    elif spec.unsigned and kind not in UNSIGNED_KINDS:
        raise UserError(
            f"{where}: quantizer {spec.quantizer!r} represents non-negative values only; "
            f"use it on {' or '.join(UNSIGNED_KINDS)} sites, not {kind}"
        )


#: Named presets (the built-in recipes build on these).
PRESETS = {
    "w8a8": lambda: QuantConfig.uniform(
        8, 8, post_softmax=SiteSpec("twin_uniform", 8), ln_reparam="mad", attn_reparam="mad"
    ),
    # laid out for the CPU runtimes' fused attention: symmetric int8 q and k (OpenVINO's int8
    # attention block takes them), the softmax map and v float (int8 there brought no speed in
    # OpenVINO or ONNX Runtime on the demo model and carried most of the W8A8 error)
    "w8a8-cpu": lambda: QuantConfig.uniform(
        8,
        8,
        qk=SiteSpec("uniform", 8, {"symmetric": True}),
        post_softmax=None,
        v=None,
        ln_reparam="mad",
        attn_reparam="mad",
    ),
    # FP8 E4M3 everywhere (per-channel weights, per-tensor activations): what Hopper/Ada GPUs run
    "fp8": lambda: QuantConfig(
        weight=_fp8(WEIGHT_OPTIONS),
        post_ln=_fp8(),
        post_gelu=_fp8(),
        post_softmax=_fp8(),
        qk=_fp8(),
        v=_fp8(),
        generic=_fp8(),
    ),
    # weight-only: 4-bit symmetric per-channel weights (int4 in the file), activations float
    "w4a16": lambda: QuantConfig(
        weight=_weight(4), post_ln=None, post_gelu=None, post_softmax=None, qk=None, v=None, generic=None
    ),
    # laid out for TensorRT's explicit INT8 (and matched against NVIDIA Model Optimizer's ONNX
    # quantizer, docs/benchmarks.md): every activation symmetric int8 with zero point 0 over the full
    # [-128, 127] (QuantizeLinear's own saturation: no Clip in front of it), Q/DQ on q, k, the softmax
    # map and v (TensorRT's fused INT8 attention takes all four); the patch embedding (its input is
    # the image) and the 10-way head are left float, as Model Optimizer leaves the small head
    "w8a8-trt": lambda: QuantConfig.uniform(
        8,
        8,
        **{kind: _trt_activation() for kind in ACTIVATION_KINDS},
        overrides={"patch_embed.*": None, "head.*": None},
        ln_reparam="mad",
        attn_reparam="mad",
    ),
    "w6a6": lambda: QuantConfig.uniform(6, 6),
    "w6a6-log": lambda: QuantConfig.log(
        6, 6, softmax="logsqrt2", gelu="adalog", ln_reparam="mad", attn_reparam="mad", qk_rotation=True
    ),
    "w4a4-uniform": lambda: QuantConfig.uniform(4, 4),
    "w4a4-adalog": lambda: QuantConfig.log(4, 4, softmax="adalog", gelu="adalog", attn_reparam="mad"),
    "w4a4-tanq": lambda: QuantConfig.log(4, 4, softmax="tanq", gelu=None, attn_reparam="mad"),
}
