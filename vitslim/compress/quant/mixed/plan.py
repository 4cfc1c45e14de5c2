"""``BitPlan``: the bits chosen per layer, as plain data, turned into ``QuantConfig`` overrides."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitslim.compress.quant.config import QuantConfig, SiteSpec
from vitslim.compress.quant.sites import Site
from vitslim.errors import UserError

__all__ = ["LayerBits", "BitPlan", "mixed_precision_summary"]


@dataclass(frozen=True)
class LayerBits:
    """One layer's choice: ``weight`` / ``act`` bits (``None``: float) of its weight and its input
    site (of kind ``input_kind``; ``None`` when it has none, e.g. the patch embedding), and the
    input site's ``quantizer`` name (``None``: the base config's)."""

    weight: int | None
    act: int | None = None
    quantizer: str | None = None
    input_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerBits:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, Mapping) or any(k not in names for k in data) or "weight" not in data:
            raise UserError(f"a bit-plan layer maps 'weight' (and {', '.join(names[1:])}) to values, got {data!r}")
        return cls(**data)


@dataclass(frozen=True)
class BitPlan:
    """Layer name (``blocks.3.mlp.fc1``, ``head``, ``patch_embed.proj``) → :class:`LayerBits`, plus
    ``meta`` (what was searched, its costs and scores; plain data)."""

    layers: Mapping[str, LayerBits]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", dict(self.layers))
        object.__setattr__(self, "meta", dict(self.meta))

    def weight_bits(self) -> dict[str, int | None]:
        return {name: lb.weight for name, lb in self.layers.items()}

    def act_bits(self) -> dict[str, int | None]:
        return {name: lb.act for name, lb in self.layers.items()}

    def overrides(self, base: QuantConfig) -> dict[str, SiteSpec | None]:
        """Per-site specs: the base config's spec of each site with the plan's bits."""
        out: dict[str, SiteSpec | None] = {}
        for name, lb in self.layers.items():
            w_site = Site(f"{name}.weight", "weight", name, "weight")
            out[w_site.name] = _with_bits(base.spec_for(w_site), lb.weight, "uniform")
            if lb.input_kind is not None:
                a_site = Site(f"{name}.input", lb.input_kind, name, "input")
                out[a_site.name] = _with_bits(base.spec_for(a_site), lb.act, lb.quantizer)
        return out

    def to_quant_config(self, base: QuantConfig) -> QuantConfig:
        """``base`` with one override per planned site, placed after the base's own overrides
        (which resolve last-wins) so the plan's bits always apply."""
        planned = self.overrides(base)
        kept = {p: s for p, s in base.overrides.items() if p not in planned}
        return dataclasses.replace(base, overrides={**kept, **planned})

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        return {"layers": {n: lb.to_dict() for n, lb in self.layers.items()}, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BitPlan:
        if not isinstance(data, Mapping) or not isinstance(data.get("layers"), Mapping):
            raise UserError("a bit plan needs a 'layers' mapping")
        return cls({n: LayerBits.from_dict(d) for n, d in data["layers"].items()}, data.get("meta") or {})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BitPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _with_bits(spec: SiteSpec | None, bits: int | None, quantizer: str | None) -> SiteSpec | None:
    """``spec`` at ``bits`` (``None``: float); ``quantizer`` replaces its quantizer (options dropped)."""
    if bits is None:
        return None
    if spec is None:
        return SiteSpec(quantizer or "uniform", bits)
    if quantizer is not None and quantizer != spec.quantizer:
        return SiteSpec(quantizer, bits)
    return SiteSpec(spec.quantizer, bits, spec.options)


def mixed_precision_summary(plan: BitPlan) -> dict[str, Any]:
    """What a report says about a mixed-precision plan: the bits chosen, the cost reached, the
    search's timings and the per-layer sensitivity it was based on."""
    meta = plan.meta
    sens = meta["sensitivity"]
    summary = {
        "config": meta["config"],
        "layers": {name: lb.to_dict() for name, lb in plan.layers.items()},
        "costs": meta["costs"],
        "seconds": meta["seconds"],
        "sensitivity": sens["weight"],
        "measured_bits": sens["measured_bits"],
        "metric": f"{sens['method']} of the model output vs fp32",
        "calibration": f"{sens['images']} calibration images",
        "sensitivity_cache": sens["cache"],
    }
    if "drop" in meta:
        summary["drop"] = meta["drop"]
    return summary
