"""Per-layer sensitivity: the damage of quantizing one layer alone at each candidate bit-width.

* ``kl`` / ``mse`` (measured): the layer's weight (or input) is fake-quantized alone and the
  model output is compared with FP32 on a few calibration images (KL of the softmax, MSE of the
  logits). Block inputs of the float run are kept, so only the blocks from the layer onwards
  are recomputed. Weight bit-widths outside ``measure_bits`` are not run through the model:
  their damage is the layer's own output error times the model-output damage per unit of layer
  output error, interpolated (linearly in bits) between the measured widths.
* ``fisher``: a second-order estimate from one backward pass per image with labels sampled
  from the model's own softmax: ``½ Σ F ⊙ (Q(W) − W)²`` with ``F`` the diagonal Fisher (so it
  estimates the same KL); inputs likewise with the gradient of the layer input.

Tables are cached as JSON keyed by a fingerprint of the weights, the images and the settings.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitslim.compress.quant.apply import fold_reparameterisations
from vitslim.compress.quant.base import MIN_SCALE
from vitslim.compress.quant.config import QuantConfig, SiteSpec, kind_options
from vitslim.compress.quant.placement import build_quantizer
from vitslim.compress.quant.sites import Site, find_sites
from vitslim.errors import UserError

from .float_run import float_run, logits_from

__all__ = ["LayerInfo", "SensitivityTable", "planned_layers", "measure_sensitivity", "fingerprint"]

#: Bumped whenever what a table holds changes, so stale caches are not read.
CACHE_VERSION = 1


@dataclass(frozen=True)
class LayerInfo:
    """A planned layer: weight elements, output channels, multiply-accumulates per image, the kind
    of its input site (``None``: none) and its stage (-1 patch embedding, block index, depth after)."""

    name: str
    params: int
    channels: int
    macs: int
    input_kind: str | None
    stage: int


@dataclass
class SensitivityTable:
    """Damage per layer and bit-width (``weight`` and ``act``, of ``method``); ``measured`` lists
    the weight widths run through the model; ``extra`` holds the other metrics seen (kl/mse)."""

    method: str
    layers: dict[str, LayerInfo]
    weight: dict[str, dict[int, float]]
    act: dict[str, dict[int, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def table(t: Mapping[str, Mapping[int, float]]) -> dict[str, dict[str, float]]:
            return {n: {str(b): float(v) for b, v in d.items()} for n, d in t.items()}

        return {
            "method": self.method,
            "layers": {n: vars(li) for n, li in self.layers.items()},
            "weight": table(self.weight),
            "act": table(self.act),
            "extra": self.extra,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityTable:
        def table(t: Mapping[str, Mapping[str, float]]) -> dict[str, dict[int, float]]:
            return {n: {int(b): float(v) for b, v in d.items()} for n, d in t.items()}

        return cls(
            data["method"],
            {n: LayerInfo(**li) for n, li in data["layers"].items()},
            table(data["weight"]),
            table(data.get("act") or {}),
            dict(data.get("extra") or {}),
            dict(data.get("meta") or {}),
        )


# ------------------------------------------------------------------------ layers and data


def _stage(name: str, depth: int) -> int:
    parts = name.split(".")
    if parts[0] == "blocks":
        return int(parts[1])
    return -1 if parts[0] == "patch_embed" else depth


def planned_layers(model: nn.Module, base: QuantConfig) -> dict[str, tuple[Site, Site | None]]:
    """Layers whose weight the base config quantizes: name → (weight site, input site or None)."""
    sites = find_sites(model)
    specs = base.resolve(sites)
    inputs = {s.module: s for s in sites if s.slot == "input"}
    return {s.module: (s, inputs.get(s.module)) for s in sites if s.is_weight and specs[s.name] is not None}


def _spec(base: QuantConfig, site: Site, bits: int) -> SiteSpec:
    spec = base.spec_for(site)
    return SiteSpec("uniform", bits) if spec is None else SiteSpec(spec.quantizer, bits, spec.options)


def prepared_model(model: nn.Module, base: QuantConfig, images: Tensor, seed: int) -> nn.Module:
    """``model`` as ``quantize_`` sees it before placing quantizers: a copy with the q/k rotation,
    the GELU shift and the post-LN / attention-output reparameterisations folded when ``base``
    asks for them (float outputs unchanged)."""
    if not (base.gelu_shift or base.ln_reparam or base.attn_reparam or base.qk_rotation):
        return model
    model = copy.deepcopy(model)
    fold_reparameterisations(model, base, base.resolve(find_sites(model)), [images], seed=seed)
    return model


def _damage(logits: Tensor, ref: Tensor, classifier: bool) -> dict[str, float]:
    out = {"mse": float(F.mse_loss(logits, ref))}
    if classifier:
        logp, logq = F.log_softmax(ref.double(), -1), F.log_softmax(logits.double(), -1)
        out["kl"] = float((logp.exp() * (logp - logq)).sum(-1).mean().clamp_min(0.0))
    return out


@contextlib.contextmanager
def _swapped_weight(module: nn.Module, weight: Tensor) -> Iterator[None]:
    original = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.copy_(weight)
    try:
        yield
    finally:
        with torch.no_grad():
            module.weight.copy_(original)


@contextlib.contextmanager
def _quantized_input(module: nn.Module, quantizer: nn.Module) -> Iterator[None]:
    handle = module.register_forward_pre_hook(lambda _m, args: (quantizer(args[0]), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _layer_output_error(module: nn.Module, rows: Tensor, delta: Tensor) -> float:
    """Mean squared change of the layer output (bias cancels) on the kept input rows."""
    if isinstance(module, nn.Conv2d):
        out = F.conv2d(rows, delta, None, module.stride, module.padding, module.dilation, module.groups)
    else:
        out = rows @ delta.T
    return float(out.double().pow(2).mean())


def _interpolate(bits: int, measured: Mapping[int, float]) -> float:
    """Piecewise-linear in bits between the measured points, constant beyond them."""
    keys = sorted(measured)
    if bits <= keys[0]:
        return measured[keys[0]]
    if bits >= keys[-1]:
        return measured[keys[-1]]
    hi = next(k for k in keys if k >= bits)
    lo = max(k for k in keys if k <= bits)
    t = (bits - lo) / (hi - lo) if hi != lo else 0.0
    return (1 - t) * measured[lo] + t * measured[hi]


# ------------------------------------------------------------------------------ measuring


def fingerprint(model: nn.Module, images: Tensor, settings: Mapping[str, Any]) -> str:
    """SHA-256 of the model's state (names, shapes, values), the images and ``settings``."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(np.ascontiguousarray(t.detach().cpu().float().numpy()).tobytes())
    h.update(np.ascontiguousarray(images.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()


def measure_sensitivity(
    model: nn.Module,
    base: QuantConfig,
    images: Tensor,
    *,
    method: str = "kl",
    weight_bits: Sequence[int] = (3, 4, 5, 6, 8),
    act_bits: Sequence[int] = (),
    measure_bits: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> SensitivityTable:
    """The :class:`SensitivityTable` of every layer ``base`` quantizes, on ``images`` (one batch).

    ``act_bits`` empty: no activation sensitivities. ``measure_bits`` (``kl``/``mse`` only):
    weight widths run through the model (``None``: all). Read from / written to ``cache_dir``.
    """
    weight_bits, act_bits = sorted(set(weight_bits)), sorted(set(act_bits))
    measure = sorted(set(weight_bits if measure_bits is None else measure_bits) & set(weight_bits))
    if method != "fisher" and not measure:
        raise UserError("measure_bits must include at least one of the weight bit-widths")
    model.eval()
    layers = planned_layers(model, base)
    if not layers:
        raise UserError("the base quantization config quantizes no weights: nothing to allocate bits to")
    settings = {
        "method": method,
        "weight_bits": weight_bits,
        "act_bits": act_bits,
        "measure_bits": measure,
        "seed": seed,
        "specs": {n: [_spec(base, w, 8).to_dict(), a and _spec(base, a, 8).to_dict()] for n, (w, a) in layers.items()},
        "reparam": [base.ln_reparam, base.attn_reparam, base.gelu_shift, base.qk_rotation],
    }
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"sensitivity-{fingerprint(model, images, settings)[:32]}.json"
        if path.is_file():
            table = SensitivityTable.from_dict(json.loads(path.read_text()))
            table.meta["cache"] = "hit"
            return table
    work = prepared_model(model, base, images, seed)
    run = float_run(work, images, list(layers), seed)
    depth = len(work.blocks)
    info = {}
    for n, (_w, a) in layers.items():
        w = work.get_submodule(n).weight
        info[n] = LayerInfo(n, w.numel(), w.shape[0], run.macs[n], a.kind if a else None, _stage(n, depth))
    classifier = run.logits.dim() == 2 and getattr(work, "num_classes", 0) > 0
    if method == "fisher":
        weight, act, extra = _fisher(work, base, run, layers, weight_bits, act_bits, classifier, progress, seed)
    else:
        weight, act, extra = _measured(
            work, base, run, layers, weight_bits, act_bits, measure, classifier, progress, seed, method
        )
    table = SensitivityTable(
        method,
        info,
        weight,
        act,
        extra,
        {"images": int(images.shape[0]), **settings, "cache": "miss" if path else "off"},
    )
    table.meta.pop("specs")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_dict()))
        tmp.replace(path)
    return table


def _fast_symmetric(w: Tensor, bits: int, grid: int, stride: int = 4) -> Tensor:
    """Fake-quantized ``w``: symmetric per-output-channel uniform, clipping ratio ``k/grid`` of
    MSE searched per channel coarse-to-fine (every ``stride``-th ratio, then the neighbours of
    the best) by quantizing directly -- the default weight quantizer's search at a fraction of
    its cost on high bit-widths (sensitivities only; ``quantize_`` runs the full search)."""
    rows = w.detach().reshape(w.shape[0], -1).float()
    qmax = (1 << (bits - 1)) - 1
    amax = rows.abs().amax(1)
    ratios = torch.arange(grid, 0, -1, dtype=torch.float32) / grid

    def errors(idx: Tensor) -> Tensor:  # idx: (C, G) ratio indices -> (C, G) squared errors
        s = (amax[:, None] * ratios[idx] / qmax).clamp_min(MIN_SCALE)
        out = torch.empty(idx.shape, dtype=torch.float64)
        buf = torch.empty_like(rows)
        for j in range(idx.shape[1]):
            sj = s[:, j : j + 1]
            torch.div(rows, sj, out=buf).round_().clamp_(-qmax, qmax).mul_(sj).sub_(rows)
            out[:, j] = torch.linalg.vecdot(buf, buf).double()
        return out

    coarse = torch.arange(0, grid, stride).expand(rows.shape[0], -1)
    best = coarse.gather(1, errors(coarse).argmin(1, keepdim=True))
    near = (best + torch.arange(-stride + 1, stride)[None, :]).clamp(0, grid - 1)
    pick = near.gather(1, errors(near).argmin(1, keepdim=True))  # ties: the widest range (lowest index)
    s = (amax[:, None] * ratios[pick] / qmax).clamp_min(MIN_SCALE)
    return (torch.clamp(torch.round(rows / s), -qmax, qmax) * s).reshape(w.shape).to(w.dtype)


def _quantized_weight(model: nn.Module, site: Site, spec: SiteSpec, seed: int) -> Tensor:
    w = model.get_submodule(site.module).weight.detach()
    opts = kind_options("weight", spec)
    fast = spec.quantizer == "uniform" and opts.get("channel_axis") == 0 and opts.get("symmetric")
    if fast and opts.get("method", "mse") == "mse" and opts.get("grid", 100) > 1:
        return _fast_symmetric(w, spec.bits, int(opts.get("grid", 100)))
    q = build_quantizer(model, site, spec, seed)
    q.calibrate(w)
    with torch.no_grad():
        return q(w)


def _input_quantizer(model: nn.Module, site: Site, spec: SiteSpec, rows: Tensor, seed: int) -> nn.Module:
    q = build_quantizer(model, site, spec, seed)
    q.calibrate(rows)
    return q


def _measured(model, base, run, layers, weight_bits, act_bits, measure, classifier, progress, seed, method):
    """Model-output damage of each layer quantized alone (see the module docstring)."""
    metric = method if classifier else "mse"
    steps = len(layers) * len(measure) + sum(1 for _w, a in layers.values() if a) * len(act_bits)
    weight: dict[str, dict[int, float]] = {}
    act: dict[str, dict[int, float]] = {}
    extra: dict[str, Any] = {"weight": {}, "act": {}, "layer_output_error": {}, "metric": metric}
    with torch.no_grad(), tqdm(total=int(steps), desc="sensitivity", disable=not progress, leave=False) as bar:
        for name, (w_site, a_site) in layers.items():
            module = model.get_submodule(name)
            stage = _stage(name, len(model.blocks))
            errors, measured, seen = {}, {}, {}
            for b in weight_bits:
                wq = _quantized_weight(model, w_site, _spec(base, w_site, b), seed)
                errors[b] = _layer_output_error(module, run.rows[name], wq - module.weight)
                if b in measure:
                    with _swapped_weight(module, wq):
                        seen[b] = _damage(logits_from(model, run, stage), run.logits, classifier)
                    measured[b] = seen[b][metric] / max(errors[b], 1e-30)
                    bar.update(1)
            weight[name] = {
                b: seen[b][metric] if b in seen else _interpolate(b, measured) * errors[b] for b in weight_bits
            }
            extra["weight"][name] = {str(b): d for b, d in seen.items()}
            extra["layer_output_error"][name] = {str(b): e for b, e in errors.items()}
            if a_site is not None and act_bits:
                act[name], extra["act"][name] = {}, {}
                for a in act_bits:
                    q = _input_quantizer(model, a_site, _spec(base, a_site, a), run.rows[name], seed)
                    with _quantized_input(module, q):
                        d = _damage(logits_from(model, run, stage), run.logits, classifier)
                    act[name][a], extra["act"][name][str(a)] = d[metric], d
                    bar.update(1)
    return weight, act, extra


def _fisher(model, base, run, layers, weight_bits, act_bits, classifier, progress, seed):
    """Diagonal-Fisher estimates (labels sampled from the model's softmax, one image at a time)."""
    if not classifier:
        raise UserError("the fisher sensitivity needs a classifier head (use 'mse' for feature models)")
    modules = {n: model.get_submodule(n) for n in layers}
    act_q: dict[str, dict[int, nn.Module]] = {}
    for name, (_w, a_site) in layers.items():
        if a_site is not None and act_bits:
            act_q[name] = {
                a: _input_quantizer(model, a_site, _spec(base, a_site, a), run.rows[name], seed) for a in act_bits
            }
    fisher = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    act = {n: dict.fromkeys(act_bits, 0.0) for n in act_q}
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, args: tuple) -> tuple:
            x = args[0] if args[0].requires_grad else args[0].detach().requires_grad_(True)
            inputs[name] = x
            return (x, *args[1:])

        return hook

    handles = [modules[n].register_forward_pre_hook(keep(n)) for n in act_q]
    flags = {n: m.weight.requires_grad for n, m in modules.items()}
    count = run.images.shape[0]
    try:
        for m in modules.values():
            m.weight.requires_grad_(True)
        for i in tqdm(range(count), desc="fisher", disable=not progress, leave=False):
            inputs.clear()
            with torch.enable_grad():
                logp = F.log_softmax(model(run.images[i : i + 1]), -1)[0]
                y = torch.multinomial(logp.detach().exp(), 1, generator=gen)[0]
                targets = [m.weight for m in modules.values()] + [inputs[n] for n in act_q]
                grads = torch.autograd.grad(-logp[y], targets, allow_unused=True)
            for f, g in zip(fisher.values(), grads[: len(modules)], strict=True):
                if g is not None:
                    f += g.detach() ** 2 / count
            with torch.no_grad():
                for n, g in zip(act_q, grads[len(modules) :], strict=True):
                    x = inputs[n].detach()
                    for a, q in act_q[n].items():
                        act[n][a] += 0.5 * float((g.detach() ** 2 * (q(x) - x) ** 2).sum()) / count
    finally:
        for h in handles:
            h.remove()
        for n, m in modules.items():
            m.weight.requires_grad_(flags[n])
    weight = {}
    with torch.no_grad():
        for name, (w_site, _a) in layers.items():
            w = modules[name].weight
            deltas = {b: _quantized_weight(model, w_site, _spec(base, w_site, b), seed) - w for b in weight_bits}
            weight[name] = {b: 0.5 * float((fisher[name] * d**2).sum()) for b, d in deltas.items()}
    return weight, act, {"metric": "fisher"}
