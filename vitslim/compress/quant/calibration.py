"""Calibration: collect what each site needs on calibration images, then search its quantizer.

1. Weight sites are calibrated on the weights alone (the quantizer's own search, per channel).
2. One pass over the images (``sequential=True``: one pass per block, stopping after it, with
   the blocks before it already quantized) collects, per activation site, a seeded subsample of
   about ``samples`` tokens (Linear inputs: token rows; attention: all operands of a few whole
   images, since a query row needs every key) plus the running per-channel extremes.
3. Each activation site's quantizer parameters are searched by the error of the layer's
   *output* (the Linear output with its quantized weight, or the attention output), MSE or
   cosine, over candidates the quantizer defines:

   * ``minmax`` / ``percentile``: statistics only (uniform: the observed or percentile range;
     the unsigned quantizers, which have no such statistic, run their own value search);
   * ``mse``: grid search -- every candidate ranked by the error of the values themselves
     (cheap), the ``keep`` best re-scored by the output error;
   * ``progressive``: coarse-to-fine search on the candidate grid in the spirit of AdaLog's
     FPCS -- a coarse sub-grid scored by output error, the ``keep // 2`` (at least 2) best
     kept, their neighbours at half the stride scored, until the stride is 1.

Candidates: uniform quantizers clip the observed range by ratios ``k/grid``; the unsigned ones
(log2, logsqrt2, adalog, tanq, twin_uniform) use their own candidate grids (e.g. AdaLog:
base exponent ``k`` x scale). This candidate interface is built on the quantizers' internals
(``_params_from_range``, ``_candidates``, ``_buckets``, ``_set_params``) without changing them;
value errors come exactly from sorted prefix sums (:class:`~.base.SortedRows`). Everything is
deterministic for a given ``seed``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitslim.errors import UserError

from .attention import TAP, explicit_attention
from .base import SortedRows, UnsignedQuantizer, kth_quantile, stack_buckets
from .logarithmic import AdaLogQuantizer
from .placement import QuantPoint, point_owner, quant_points
from .tangent import TanQuantizer
from .twin_uniform import TwinUniformQuantizer
from .uniform import UniformQuantizer

__all__ = [
    "SEARCHES",
    "OBJECTIVES",
    "calibration_batches",
    "calibrate_model",
    "collect_rows",
    "output_error",
    "run_until",
    "search_quantizer",
]

SEARCHES = ("mse", "minmax", "percentile", "progressive")
OBJECTIVES = ("mse", "cosine")
#: Values used by the cheap value-error ranking of the ``mse`` search.
VALUE_SAMPLES = 1 << 18
#: Points per axis of the first ``progressive`` round.
COARSE_POINTS = 5
#: Inner (scale) axis length of the 2-D candidate grids of the unsigned quantizers.
_INNER_AXIS = {AdaLogQuantizer: "scale_steps", TanQuantizer: "scale_steps", TwinUniformQuantizer: "grid"}


# ----------------------------------------------------------------------------- data


def calibration_batches(data: Tensor | Iterable, device: torch.device | None = None) -> list[Tensor]:
    """Image batches from a tensor ``[B, 3, H, W]``, or an iterable (a DataLoader) of tensors
    or of ``(images, labels, ...)`` tuples."""
    items = [data] if isinstance(data, Tensor) else list(data)
    batches = []
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise UserError(f"calibration data must be image batches [B, 3, H, W], got {type(x).__name__}")
        batches.append(x.float() if device is None else x.to(device=device, dtype=torch.float32))
    if not batches or sum(b.shape[0] for b in batches) == 0:
        raise UserError("no calibration images")
    return batches


class _Quota:
    """Spreads ``total`` picks over a stream of ``images`` images in proportion to each batch."""

    def __init__(self, total: int, images: int) -> None:
        self.total, self.images, self.seen, self.taken = total, images, 0, 0

    def take(self, available: int, batch_images: int) -> int:
        self.seen += batch_images
        target = min(self.total, math.ceil(self.total * self.seen / self.images))
        k = max(0, min(target - self.taken, available))
        self.taken += k
        return k


def _pick(n: int, k: int, gen: torch.Generator) -> Tensor:
    return torch.randperm(n, generator=gen)[:k].sort().values


class _Extremes:
    """Running per-channel (last axis) minimum and maximum."""

    def __init__(self) -> None:
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def add(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1])
        lo, hi = rows.amin(0), rows.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def rows(self) -> Tensor:
        return torch.stack([self.lo, self.hi])


class _RowSampler:
    """Seeded subsample of the token rows of a stream of ``[..., C]`` tensors, with extremes."""

    def __init__(self, samples: int, images: int, seed: int) -> None:
        self.quota = _Quota(samples, images)
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[Tensor] = []
        self.extremes = _Extremes()

    def add(self, x: Tensor) -> None:
        x = x.detach().float()
        rows = x.reshape(-1, x.shape[-1])
        k = self.quota.take(rows.shape[0], x.shape[0])
        if k:
            self.parts.append(rows[_pick(rows.shape[0], k, self.gen).to(rows.device)].clone())
        self.extremes.add(x)

    def rows(self) -> Tensor:
        """The sampled rows (at least one)."""
        return torch.cat(self.parts) if self.parts else self.extremes.rows()

    def values(self) -> Tensor:
        """Sampled rows plus the per-channel extremes of everything seen (for ranges)."""
        return torch.cat([self.rows(), self.extremes.rows()])


class _AttentionSampler:
    """Tap storing the operands ``(q, k, v, bias)`` of a seeded subset of whole images."""

    def __init__(self, samples: int, images: int, seed: int) -> None:
        self.samples, self.images = samples, images
        self.quota: _Quota | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.extremes = {slot: _Extremes() for slot in "qkv"}

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> None:
        if self.quota is None:  # tokens per image are known now
            self.quota = _Quota(max(1, math.ceil(self.samples / q.shape[2])), self.images)
        n = self.quota.take(q.shape[0], q.shape[0])
        if n:
            idx = _pick(q.shape[0], n, self.gen).to(q.device)
            b = None if bias is None else bias.expand(q.shape[0], *bias.shape[1:])[idx].clone()
            self.parts.append((q[idx].clone(), k[idx].clone(), v[idx].clone(), b))
        for slot, t in zip("qkv", (q, k, v), strict=True):
            self.extremes[slot].add(t)

    def operands(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        q, k, v, b = zip(*self.parts, strict=True)
        return torch.cat(q), torch.cat(k), torch.cat(v), None if b[0] is None else torch.cat(b)


def collect_rows(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Sequence[Tensor],
    *,
    samples: int,
    seed: int,
    inputs: bool = False,
) -> dict[str, Tensor]:
    """Per module: a seeded subsample of about ``samples`` rows of its output (its first input
    with ``inputs``) plus two rows with the per-channel minimum and maximum over all of it (one
    float pass over ``batches``)."""
    images = sum(b.shape[0] for b in batches)
    samplers = {name: _RowSampler(samples, images, seed + i) for i, name in enumerate(modules)}
    if inputs:
        handles = [m.register_forward_pre_hook(lambda _m, i, s=samplers[n]: s.add(i[0])) for n, m in modules.items()]
    else:
        handles = [m.register_forward_hook(lambda _m, _i, o, s=samplers[n]: s.add(o)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: s.values() for name, s in samplers.items()}


# ------------------------------------------------------------------------- candidates


@dataclass
class _Grid:
    """A quantizer's candidate parameters on a grid; ``apply(index)`` loads one into it and
    ``value_errors(rows)`` scores every candidate by the MSE of the values themselves."""

    shape: tuple[int, ...]
    apply: Callable[[tuple[int, ...]], None]
    value_errors: Callable[[Tensor], Tensor]


def _set_uniform(q: UniformQuantizer, scale: Tensor, zero: Tensor) -> None:
    if q.channel_axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
    q.scale = scale.contiguous()
    q.zero_point = zero.to(torch.int32).contiguous()
    q.calibrated_flag = torch.tensor(True, device=q.calibrated_flag.device)


def _uniform_range(q: UniformQuantizer, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    if q.symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    return lo, hi


def _uniform_grid(q: UniformQuantizer, values: Tensor) -> _Grid:
    """Clipping ratios ``(grid - i)/grid`` of the observed range (widest first: it wins ties)."""
    rows = q._rows(values)
    lo, hi = _uniform_range(q, rows.amin(1), rows.amax(1))
    ratios = torch.arange(q.grid, 0, -1, dtype=torch.float32, device=lo.device) / q.grid

    def apply(index: tuple[int, ...]) -> None:
        _set_uniform(q, *q._params_from_range(lo * ratios[index[0]], hi * ratios[index[0]]))

    def value_errors(sample: Tensor) -> Tensor:
        table = SortedRows(q._rows(sample))
        codes = torch.arange(q.qmin, q.qmax + 1, dtype=torch.float64, device=lo.device)
        chunk = max(1, (1 << 22) // (lo.numel() * codes.numel()))  # bounded memory
        errs = []
        for r in ratios.split(chunk):
            s, z = q._params_from_range(lo[:, None] * r, hi[:, None] * r)  # (C, G)
            sd, zd = s.double()[..., None], z.double()[..., None]
            errs.append(table.mse((codes[:-1] - zd + 0.5) * sd, (codes - zd) * sd).mean(0))
        return torch.cat(errs)

    return _Grid((q.grid,), apply, value_errors)


def _unsigned_grid(q: UnsignedQuantizer, values: Tensor) -> _Grid:
    """The quantizer's own candidates, as a 2-D grid (parameter x scale) where it has one."""
    params = list(q._candidates(values.reshape(-1).float() + q.shift))
    inner_attr = next((a for cls, a in _INNER_AXIS.items() if isinstance(q, cls)), None)
    inner = int(getattr(q, inner_attr)) if inner_attr else len(params)
    shape = (len(params) // inner, inner) if len(params) % inner == 0 else (len(params),)

    def apply(index: tuple[int, ...]) -> None:
        flat = index[0] * shape[1] + index[1] if len(shape) == 2 else index[0]
        q._set_params(params[flat])
        q.calibrated_flag = torch.tensor(True, device=q.calibrated_flag.device)

    def value_errors(sample: Tensor) -> Tensor:
        table = SortedRows(sample.reshape(1, -1) + q.shift)
        errs = []
        for start in range(0, len(params), 512):
            thr, val = stack_buckets([q._buckets(p) for p in params[start : start + 512]])
            errs.append(table.mse(thr, val)[0])
        return torch.cat(errs)

    return _Grid(shape, apply, value_errors)


def _grid(q, values: Tensor) -> _Grid:
    if isinstance(q, UniformQuantizer):
        return _uniform_grid(q, values)
    if isinstance(q, UnsignedQuantizer):
        return _unsigned_grid(q, values)
    raise UserError(f"no calibration search for quantizer {q.name!r}")


def _statistic(q, values: Tensor, search: str) -> None:
    """``minmax`` / ``percentile`` calibration without an output-error search."""
    if isinstance(q, UniformQuantizer):
        rows = q._rows(values)
        if search == "percentile" and rows.shape[1] > 1:
            p = q.percentile
            lo, hi = (
                (-kth_quantile(rows.abs(), p), kth_quantile(rows.abs(), p))
                if q.symmetric
                else (kth_quantile(rows, 1.0 - p), kth_quantile(rows, p))
            )
        else:
            lo, hi = rows.amin(1), rows.amax(1)
        _set_uniform(q, *q._params_from_range(*_uniform_range(q, lo, hi)))
    else:
        q.calibrate(values)


def _progressive(shape: tuple[int, ...], score: Callable[[tuple[int, ...]], float], keep: int) -> tuple[int, ...]:
    """Coarse-to-fine search on an index grid: ~``COARSE_POINTS`` per axis first, then the
    ``keep`` best candidates' neighbours at half the stride, until the stride is 1."""
    stride = [max(1, math.ceil(n / COARSE_POINTS)) for n in shape]
    scores: dict[tuple[int, ...], float] = {}

    def visit(indices: Iterable[tuple[int, ...]]) -> None:
        for i in indices:
            if i not in scores:
                scores[i] = score(i)

    visit(itertools.product(*(range(0, n, s) for n, s in zip(shape, stride, strict=True))))
    while max(stride) > 1:
        stride = [max(1, s // 2) for s in stride]
        best = sorted(scores, key=lambda i: (scores[i], i))[:keep]
        for b in best:
            axes = [
                sorted({min(max(c + d, 0), n - 1) for d in (-s, 0, s)})
                for c, n, s in zip(b, shape, stride, strict=True)
            ]
            visit(itertools.product(*axes))
    return min(scores, key=lambda i: (scores[i], i))


def output_error(y: Tensor, ref: Tensor, objective: str) -> float:
    """``mse``: mean squared error; ``cosine``: mean over rows (last axis) of 1 - cosine similarity."""
    if objective == "mse":
        return float(F.mse_loss(y, ref))
    cos = F.cosine_similarity(y.reshape(-1, y.shape[-1]), ref.reshape(-1, ref.shape[-1]), dim=-1)
    return float((1.0 - cos).mean())


def search_quantizer(
    point: QuantPoint,
    values: Tensor,
    evaluate: Callable[[], Tensor],
    reference: Tensor,
    *,
    search: str,
    objective: str,
    keep: int,
    seed: int,
) -> float:
    """Set ``point``'s quantizer to the best candidate; returns its output error."""
    q = point.quantizer
    if search in ("minmax", "percentile"):
        _statistic(q, values, search)
        return output_error(evaluate(), reference, objective)
    grid = _grid(q, values)
    cache: dict[tuple[int, ...], float] = {}

    def score(index: tuple[int, ...]) -> float:
        if index not in cache:
            grid.apply(index)
            cache[index] = output_error(evaluate(), reference, objective)
        return cache[index]

    if search == "progressive":
        best = _progressive(grid.shape, score, max(2, keep // 2))
    else:  # rank all candidates by the error of the values (exact, from sorted prefix sums)
        flat = values.reshape(-1, values.shape[-1])
        if flat.numel() > VALUE_SAMPLES:
            gen = torch.Generator().manual_seed(seed)
            flat = flat[_pick(flat.shape[0], max(1, VALUE_SAMPLES // flat.shape[1]), gen).to(flat.device)]
        errs = grid.value_errors(flat).tolist()
        indices = list(itertools.product(*map(range, grid.shape)))
        ranked = sorted(range(len(indices)), key=lambda i: (errs[i], i))[:keep]
        best = min((indices[i] for i in ranked), key=lambda i: (score(i), i))
    grid.apply(best)
    q.search_mse = None  # the value-MSE of the quantizer's own search does not apply
    return score(best)


# ----------------------------------------------------------------------------- stages


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@contextlib.contextmanager
def _enabled_only(points: Iterable[QuantPoint]) -> Iterator[None]:
    points = list(points)
    flags = [p.enabled for p in points]
    for p in points:
        p.enabled = True
    try:
        yield
    finally:
        for p, flag in zip(points, flags, strict=True):
            p.enabled = flag


def _stage_of(site: str, depth: int) -> int:
    """Block index of a site; -1 before the blocks (patch embedding), ``depth`` after them."""
    parts = site.split(".")
    if parts[0] == "blocks":
        return int(parts[1])
    return -1 if parts[0] == "patch_embed" else depth


def run_until(model: nn.Module, batches: Sequence[Tensor], stop_after: nn.Module | None, bar) -> None:
    """Run every batch through ``model``, ending each pass after ``stop_after`` (None: full pass)."""

    def stop(*_args) -> None:
        raise _Stop

    handle = stop_after.register_forward_hook(stop) if stop_after is not None else None
    try:
        for x in batches:
            with contextlib.suppress(_Stop):
                model(x)
            bar.update(1)
    finally:
        if handle is not None:
            handle.remove()


def _problems(owner: nn.Module, points: Sequence[QuantPoint], sampler: _RowSampler | _AttentionSampler):
    """Per point of one owner module: (search values, evaluate(), float reference output)."""
    if isinstance(sampler, _RowSampler):  # a Linear's input, scored with its quantized weight
        (point,) = points
        x = sampler.rows()
        weight = owner._modules.get("weight_quant")
        w_hat = owner.weight if weight is None else weight.quantizer(owner.weight)  # computed once

        def evaluate() -> Tensor:
            with _enabled_only([point]):
                return F.linear(point(x), w_hat, owner.bias)

        yield point, sampler.values(), evaluate, F.linear(x, owner.weight, owner.bias)
        return
    q, k, v, bias = sampler.operands()
    reference, probs = explicit_attention(owner, q, k, v, bias)
    for point in points:
        slot = point.site.rpartition(".")[2]
        if slot == "softmax":
            values = probs
        else:
            stored = {"q": q, "k": k, "v": v}[slot]
            values = torch.cat([stored.reshape(-1, stored.shape[-1]), sampler.extremes[slot].rows()])

        def evaluate(point: QuantPoint = point, slot: str = slot) -> Tensor:
            with _enabled_only([point]):  # the map / v operand alone need no new softmax
                if slot == "softmax":
                    return point(probs) @ v
                if slot == "v":
                    return probs @ point(v)
                return explicit_attention(owner, q, k, v, bias)[0]

        yield point, values, evaluate, reference


def _calibrate_stage(
    model: nn.Module,
    points: Mapping[str, QuantPoint],
    batches: Sequence[Tensor],
    stop_after: nn.Module | None,
    *,
    search: str,
    objective: str,
    samples: int,
    keep: int,
    seed: int,
    bar,
) -> dict[str, float]:
    """Collect the data of ``points`` in one pass, then search each point's quantizer."""
    images = sum(b.shape[0] for b in batches)
    groups: dict[str, list[QuantPoint]] = {}
    for name, point in points.items():
        groups.setdefault(name.rpartition(".")[0], []).append(point)
    owners = {name: model.get_submodule(name) for name in groups}
    samplers: dict[str, _RowSampler | _AttentionSampler] = {}
    handles = []
    try:
        for i, (name, owner) in enumerate(owners.items()):
            if isinstance(owner, nn.Linear):
                s = samplers[name] = _RowSampler(samples, images, seed * 7919 + i)
                handles.append(owner.register_forward_pre_hook(lambda _m, args, s=s: s.add(args[0])))
            else:
                samplers[name] = _AttentionSampler(samples, images, seed * 7919 + i)
                setattr(owner, TAP, samplers[name])
        run_until(model, batches, stop_after, bar)
    finally:
        for h in handles:
            h.remove()
        for owner in owners.values():
            owner.__dict__.pop(TAP, None)

    errors = {}
    for name, owner in owners.items():
        for point, values, evaluate, reference in _problems(owner, groups[name], samplers.pop(name)):
            errors[point.site] = search_quantizer(
                point,
                values,
                evaluate,
                reference,
                search=search,
                objective=objective,
                keep=keep,
                seed=seed + len(errors),
            )
            bar.update(1)
    return errors


def calibrate_model(
    model: nn.Module,
    batches: Sequence[Tensor],
    *,
    search: str = "mse",
    objective: str = "mse",
    sequential: bool = False,
    samples: int = 2048,
    keep: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Calibrate every point of a patched model (see the module docstring) and enable them.

    Returns the output error (``objective``) of each activation site's chosen parameters.
    """
    if search not in SEARCHES:
        raise UserError(f"unknown search {search!r} (choose from {', '.join(SEARCHES)})")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    points = quant_points(model)
    depth = len(model.blocks)
    weights = {n: p for n, p in points.items() if n.endswith(".weight")}
    activations = {n: p for n, p in points.items() if n not in weights}
    for p in weights.values():
        p.quantizer.calibrate(point_owner(model, p).weight.detach())
    if sequential:
        stages = [(i, {n: p for n, p in activations.items() if _stage_of(n, depth) == i}) for i in range(depth + 1)]
        stages = [(i, s) for i, s in stages if s]
    else:
        stages = [(depth, activations)] if activations else []
    total = len(stages) * len(batches) + len(activations)
    errors: dict[str, float] = {}
    for p in points.values():
        p.enabled = False
    try:
        with torch.no_grad(), tqdm(total=total, desc="calibrating", disable=not progress, leave=False) as bar:
            for i, stage in stages:
                if sequential:  # everything before this block is quantized
                    for n, p in points.items():
                        p.enabled = _stage_of(n, depth) < i
                stop = model.blocks[i] if i < depth else None
                errors.update(
                    _calibrate_stage(
                        model,
                        stage,
                        batches,
                        stop,
                        search=search,
                        objective=objective,
                        samples=samples,
                        keep=keep,
                        seed=seed,
                        bar=bar,
                    )
                )
    finally:
        for p in points.values():
            p.enabled = True
    return errors
