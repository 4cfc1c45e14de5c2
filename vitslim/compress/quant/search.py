"""Searching one quantizer's parameters by the error of its layer's output.

Candidates: uniform quantizers clip the observed range by ratios ``k/grid`` (fp8 ones their absolute
maximum, ``k >= grid/2``); the unsigned ones
(log2, logsqrt2, adalog, tanq, twin_uniform) use their own candidate grids (e.g. AdaLog: base
exponent ``k`` x scale). This candidate interface is built on the quantizers' internals
(``_params_from_range``, ``_candidates``, ``_buckets``, ``_set_params``) without changing them;
value errors come exactly from sorted prefix sums (:class:`~.base.SortedRows`). The searches
(``mse``, ``minmax``, ``percentile``, ``progressive``) are described in :mod:`.calibration`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitslim.errors import UserError

from .base import SortedRows, UnsignedQuantizer, kth_quantile, stack_buckets
from .fp8 import Fp8Quantizer
from .logarithmic import AdaLogQuantizer
from .placement import QuantPoint
from .samplers import pick
from .tangent import TanQuantizer
from .twin_uniform import TwinUniformQuantizer
from .uniform import UniformQuantizer

__all__ = ["SEARCHES", "OBJECTIVES", "output_error", "search_quantizer"]

SEARCHES = ("mse", "minmax", "percentile", "progressive")
OBJECTIVES = ("mse", "cosine")
#: Values used by the cheap value-error ranking of the ``mse`` search.
VALUE_SAMPLES = 1 << 18
#: Points per axis of the first ``progressive`` round.
COARSE_POINTS = 5
#: Inner (scale) axis length of the 2-D candidate grids of the unsigned quantizers.
_INNER_AXIS = {AdaLogQuantizer: "scale_steps", TanQuantizer: "scale_steps", TwinUniformQuantizer: "grid"}


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


def _fp8_grid(q: Fp8Quantizer, values: Tensor) -> _Grid:
    """The fp8 quantizer's clipping ratios of the observed absolute maximum (widest first)."""
    amax = q._rows(values).abs().amax(1)
    ratios = q.clip_ratios().tolist()

    def apply(index: tuple[int, ...]) -> None:
        q.set_amax(amax * ratios[index[0]])

    def value_errors(sample: Tensor) -> Tensor:
        rows = q._rows(sample)
        return torch.stack([Fp8Quantizer.clip_errors(rows, amax * r).mean() for r in ratios])

    return _Grid((len(ratios),), apply, value_errors)


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
    if isinstance(q, Fp8Quantizer):
        return _fp8_grid(q, values)
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
            flat = flat[pick(flat.shape[0], max(1, VALUE_SAMPLES // flat.shape[1]), gen).to(flat.device)]
        errs = grid.value_errors(flat).tolist()
        indices = list(itertools.product(*map(range, grid.shape)))
        ranked = sorted(range(len(indices)), key=lambda i: (errs[i], i))[:keep]
        best = min((indices[i] for i in ranked), key=lambda i: (score(i), i))
    grid.apply(best)
    q.search_mse = None  # the value-MSE of the quantizer's own search does not apply
    return score(best)
