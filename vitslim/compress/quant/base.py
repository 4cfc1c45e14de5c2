"""Base class shared by every quantizer.

A quantizer is a small :class:`torch.nn.Module` that

* holds its parameters (scales, zero points, searched exponents...) as registered
  buffers, so ``state_dict()`` saves them and ``load_state_dict()`` restores them
  (buffers whose calibrated shape differs from the placeholder, e.g. per-channel
  scales, are resized on load);
* is calibrated once with :meth:`Quantizer.calibrate` on a tensor (or a list of
  tensors) of representative values; each subclass runs its own search, always
  minimising the mean squared error between the fake-quantized tensor and the input;
* fake-quantizes in :meth:`Quantizer.forward` (quantize then dequantize, float in,
  float out, same dtype as the input);
* exposes its integer codes with :meth:`Quantizer.quantize` (an ``int32`` tensor whose
  values fit in ``bits`` bits, see :meth:`Quantizer.code_range`) and
  :meth:`Quantizer.dequantize`, with ``dequantize(quantize(x)) == forward(x)``;
* describes itself with :meth:`Quantizer.config` (``{"name", "bits", "options"}``,
  JSON-serialisable), so ``quantizer_from_config(q.config())`` plus
  ``load_state_dict(q.state_dict())`` rebuilds an identical quantizer.

All arithmetic is done in float32 (inputs of other float dtypes are converted and the
result converted back), fully vectorised; the only Python loops run over search
candidates, never over elements.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Quantizer", "UnsignedQuantizer", "MIN_BITS", "MAX_BITS", "MIN_SCALE"]

MIN_BITS = 2
MAX_BITS = 8
#: Smallest scale a search may produce (guards all-zero calibration data).
MIN_SCALE = 1e-8
#: Default number of values a parameter search looks at (a deterministic random subset
#: of the calibration data; statistics such as max and quantiles use all of it).
DEFAULT_SEARCH_SAMPLES = 1 << 22


def _check_bits(bits: Any) -> int:
    try:
        if isinstance(bits, bool):
            raise TypeError
        value = operator.index(bits)
    except TypeError:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}") from None
    if not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {value}")
    return value


def kth_quantile(rows: Tensor, q: float) -> Tensor:
    """Nearest-rank ``q`` quantile of each row of a 2-D tensor (works on any size,
    unlike :func:`torch.quantile`)."""
    n = rows.shape[1]
    k = min(max(int(round(q * (n - 1))) + 1, 1), n)
    return torch.kthvalue(rows, k, dim=1).values


class SortedRows:
    """Calibration rows sorted once, with float64 prefix sums of ``x`` and ``x²``.

    Every quantizer here is a monotone step function of its input, described by
    ascending decision ``thresholds`` (``K - 1`` per row) and the ``K`` output
    ``values`` of the buckets between them. The squared error of a candidate is then
    ``sum_i S2_i - 2·v_i·S1_i + n_i·v_i²`` over the buckets: ``O(K log N)`` per candidate
    instead of ``O(N)``, so the searches can afford fine grids on all the data.
    """

    def __init__(self, rows: Tensor) -> None:
        self.sorted = torch.sort(rows.float(), dim=1).values.contiguous()
        d = self.sorted.double()
        zero = torch.zeros(d.shape[0], 1, dtype=torch.float64, device=d.device)
        self.c1 = torch.cat([zero, d.cumsum(1)], dim=1)
        self.c2 = torch.cat([zero, (d * d).cumsum(1)], dim=1)
        self.n = d.shape[1]

    def mse(self, thresholds: Tensor, values: Tensor) -> Tensor:
        """MSE of step functions, per row and candidate.

        ``thresholds``: ``(C, M, K-1)`` (or ``(M, K-1)``, shared by all rows), ascending
        along the last axis; ``values``: ``(C, M, K)`` (or ``(M, K)``). Inputs below the
        first threshold take ``values[..., 0]``, inputs ``>= thresholds[..., i]`` take
        ``values[..., i + 1]``. Returns ``(C, M)`` float64. All ``M`` candidates go through
        one ``searchsorted`` call (many tiny calls are slow on a busy multi-core CPU).
        """
        c = self.sorted.shape[0]
        thr = thresholds.to(device=self.sorted.device, dtype=self.sorted.dtype)
        val = values.to(device=self.sorted.device, dtype=torch.float64)
        if thr.dim() == 2:
            thr = thr.unsqueeze(0)
        if val.dim() == 2:
            val = val.unsqueeze(0)
        m, k1 = thr.shape[1], thr.shape[2]
        thr = thr.expand(c, m, k1).reshape(c, m * k1).contiguous()
        idx = torch.searchsorted(self.sorted, thr).reshape(c, m, k1)
        lo = torch.zeros(c, m, 1, dtype=idx.dtype, device=idx.device)
        hi = torch.full((c, m, 1), self.n, dtype=idx.dtype, device=idx.device)
        bounds = torch.cat([lo, idx, hi], dim=2)
        flat = bounds.reshape(c, -1)
        g1 = self.c1.gather(1, flat).reshape(c, m, k1 + 2)
        g2 = self.c2.gather(1, flat).reshape(c, m, k1 + 2)
        s1 = g1[..., 1:] - g1[..., :-1]
        s2 = g2[..., 1:] - g2[..., :-1]
        cnt = (bounds[..., 1:] - bounds[..., :-1]).double()
        val = val.expand(c, m, k1 + 1)
        sse = (s2 - 2.0 * val * s1 + cnt * val * val).sum(dim=2)
        return (sse / self.n).clamp_min(0.0)


def stack_buckets(buckets: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack per-candidate (thresholds, values) of different lengths into ``(M, K-1)``
    and ``(M, K)``, padding with ``+inf`` thresholds (empty buckets)."""
    k = max(int(v.numel()) for _, v in buckets)
    thr = torch.full((len(buckets), k - 1), math.inf, dtype=torch.float64)
    val = torch.zeros((len(buckets), k), dtype=torch.float64)
    for i, (t, v) in enumerate(buckets):
        thr[i, : t.numel()] = t.double().cpu()
        val[i, : v.numel()] = v.double().cpu()
    return thr, val


class Quantizer(nn.Module):
    """Abstract fake-quantizer with ``bits`` in [2, 8].

    Subclasses implement :meth:`_calibrate` (search on 2-D calibration rows),
    :meth:`quantize` and :meth:`dequantize`, and list their constructor options in
    :meth:`extra_config`.

    Args:
        bits: code width, 2..8 (``ValueError`` otherwise).
        search_samples: at most this many values (per channel row, spread over the
            rows) are used by the error-minimising searches; ``None`` uses all.
        seed: seed of the deterministic subsampling.
    """

    #: Registry key, set by :func:`~vitslim.compress.quant.registry.register_quantizer`.
    registry_name: ClassVar[str] = ""

    def __init__(
        self,
        bits: int = 8,
        *,
        search_samples: int | None = DEFAULT_SEARCH_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        if search_samples is not None and int(search_samples) < 1:
            raise ValueError(f"search_samples must be positive or None, got {search_samples}")
        self.search_samples = None if search_samples is None else int(search_samples)
        self.seed = int(seed)
        #: MSE of the chosen parameters on the search data (set by calibrate()).
        self.search_mse: float | None = None
        self.register_buffer("calibrated_flag", torch.tensor(False))

    # ------------------------------------------------------------------ config
    @property
    def name(self) -> str:
        return self.registry_name or type(self).__name__

    def extra_config(self) -> dict[str, Any]:
        """Constructor options besides ``bits`` (JSON-serialisable)."""
        return {"search_samples": self.search_samples, "seed": self.seed}

    def config(self) -> dict[str, Any]:
        """``{"name": ..., "bits": ..., "options": {...}}``; rebuild with
        :func:`~vitslim.compress.quant.registry.quantizer_from_config`."""
        return {"name": self.name, "bits": self.bits, "options": self.extra_config()}

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.extra_config().items())
        return f"bits={self.bits}, {opts}, calibrated={self.calibrated}"

    # ------------------------------------------------------------ calibration
    @property
    def calibrated(self) -> bool:
        return bool(self.calibrated_flag.item())

    def channel_axis_(self) -> int | None:
        """Axis holding the channels for per-channel quantizers, ``None`` when per-tensor."""
        return None

    def _rows(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """Calibration data as float32 rows: ``(C, N)`` per channel, ``(1, N)`` per tensor."""
        xs = [x] if isinstance(x, Tensor) else list(x)
        if not xs:
            raise ValueError("calibrate() needs at least one tensor")
        axis = self.channel_axis_()
        rows = []
        for t in xs:
            if not isinstance(t, Tensor):
                raise TypeError(f"calibrate() expects tensors, got {type(t).__name__}")
            t = t.detach().float()
            if axis is None:
                rows.append(t.reshape(1, -1))
            else:
                if t.dim() == 0:
                    raise ValueError("per-channel calibration needs a tensor with a channel axis")
                rows.append(t.movedim(axis, 0).reshape(t.shape[axis], -1))
        out = torch.cat(rows, dim=1)
        if out.numel() == 0:
            raise ValueError("calibrate() got an empty tensor")
        if not torch.isfinite(out).all():
            raise ValueError("calibration data contains NaN or infinite values")
        return out

    def _sample(self, rows: Tensor) -> Tensor:
        """Deterministic random subset of columns used by the searches."""
        if self.search_samples is None:
            return rows
        per_row = max(1, self.search_samples // rows.shape[0])
        n = rows.shape[1]
        if n <= per_row:
            return rows
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        idx = torch.randperm(n, generator=gen)[:per_row].to(rows.device)
        return rows[:, idx]

    @torch.no_grad()
    def calibrate(self, x: Tensor | Sequence[Tensor]) -> Quantizer:
        """Search the parameters on ``x`` (a tensor or a list of tensors) by minimising the
        MSE of the fake-quantized values; returns ``self``."""
        self._calibrate(self._rows(x))
        self.calibrated_flag = torch.tensor(True, device=self.calibrated_flag.device)
        return self

    def _calibrate(self, rows: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_calibrated(self) -> None:
        if not self.calibrated:
            raise RuntimeError(
                f"{self.name} quantizer is not calibrated: call .calibrate(x) or load a state_dict first"
            )

    # ---------------------------------------------------------------- codes
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest integer code (inclusive); unsigned by default."""
        return 0, (1 << self.bits) - 1

    def quantize(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Integer codes (``torch.int32``) of ``x``."""
        raise NotImplementedError

    def dequantize(self, codes: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Float32 values of integer ``codes``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Fake quantization: ``dequantize(quantize(x))`` in the dtype of ``x``."""
        if not torch.is_floating_point(x):
            raise TypeError(f"fake quantization expects a float tensor, got {x.dtype}")
        return self._fake_quantize(x).to(x.dtype)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        """``dequantize(quantize(x))`` of a float tensor (subclasses compute it faster)."""
        return self.dequantize(self.quantize(x))

    @torch.no_grad()
    def levels(self) -> Tensor:
        """All values the codes can represent (sorted, unique); per-channel quantizers
        return one row per channel."""
        self._check_calibrated()
        lo, hi = self.code_range()
        codes = torch.arange(lo, hi + 1, dtype=torch.int32, device=self.calibrated_flag.device)
        return torch.unique(self.dequantize(codes))

    @torch.no_grad()
    def mse(self, x: Tensor) -> float:
        """Mean squared error of the fake-quantized ``x``."""
        return float(((self(x).double() - x.double()) ** 2).mean())

    # ------------------------------------------------------------ state dict
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Calibrated buffers may have a different shape than the placeholders
        # (per-channel scales): resize them before the default copy.
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict:
                src = state_dict[key]
                if isinstance(src, Tensor) and src.shape != buf.shape:
                    self._buffers[name] = torch.empty(src.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class UnsignedQuantizer(Quantizer):
    """Per-tensor quantizer of non-negative values (post-softmax), with an optional
    ``shift``: the quantizer then works on ``u = x + shift`` and subtracts the shift
    again on dequantization (post-GELU: ``shift = 0.16997 = |min GELU|`` makes the input
    non-negative; folding the shift into the next layer's bias is done elsewhere).

    Values with ``u <= 0`` map to the code representing zero.

    Subclasses name their parameter buffers in ``param_names`` and implement
    ``_encode(u, params)`` / ``_decode(codes, params)`` as pure functions of explicit
    parameters, ``_buckets(params)`` (the same step function as ascending thresholds and
    bucket values) and ``_candidates(u)`` yielding candidate parameter dicts. The search
    scores every candidate exactly with :class:`SortedRows` (prefix sums over the sorted
    data, see there) and keeps the lowest MSE (the first one on ties: deterministic).
    """

    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, bits: int = 8, *, shift: float = 0.0, **kwargs: Any) -> None:
        super().__init__(bits, **kwargs)
        shift = float(shift)
        if not math.isfinite(shift):
            raise ValueError(f"shift must be finite, got {shift}")
        self.shift = shift

    def extra_config(self) -> dict[str, Any]:
        return {**super().extra_config(), "shift": self.shift}

    # parameters -----------------------------------------------------------
    def _params(self) -> dict[str, Tensor]:
        return {n: getattr(self, n) for n in self.param_names}

    def _set_params(self, params: Mapping[str, Tensor]) -> None:
        for n in self.param_names:
            old = getattr(self, n)
            setattr(self, n, torch.as_tensor(params[n], dtype=old.dtype).to(old.device).reshape(()))

    def _encode(self, u: Tensor, params: Mapping[str, Tensor]) -> Tensor:  # pragma: no cover
        """Codes of ``u = x + shift`` under explicit parameters: integer values in any dtype
        (:meth:`quantize` casts them to int32, the fake-quant path to int64 indices)."""
        raise NotImplementedError

    def _decode(self, codes: Tensor, params: Mapping[str, Tensor]) -> Tensor:  # pragma: no cover
        """Values (in the ``u`` domain) of ``codes`` under explicit parameters."""
        raise NotImplementedError

    def _buckets(self, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """(ascending thresholds, bucket values) of the step function ``u -> û``."""
        raise NotImplementedError

    def _candidates(self, u: Tensor) -> Iterable[dict[str, Any]]:  # pragma: no cover
        """Candidate parameter dicts for the search (``u``: all shifted data, 1-D)."""
        raise NotImplementedError

    # calibration ------------------------------------------------------------
    def _calibrate(self, rows: Tensor) -> None:
        u = rows.reshape(-1) + self.shift
        table = SortedRows(self._sample(rows).reshape(1, -1) + self.shift)
        cands = list(self._candidates(u))
        errs = []
        for start in range(0, len(cands), 512):  # bounded memory
            thr, val = stack_buckets([self._buckets(c) for c in cands[start : start + 512]])
            errs.append(table.mse(thr, val)[0])
        err = torch.cat(errs)
        best = int(torch.argmin(err))  # first minimum: deterministic
        self._set_params(cands[best])
        self.search_mse = float(err[best])

    # codes --------------------------------------------------------------------
    def quantize(self, x: Tensor) -> Tensor:
        self._check_calibrated()
        return self._encode(x.float() + self.shift, self._params()).to(torch.int32)

    def dequantize(self, codes: Tensor) -> Tensor:
        self._check_calibrated()
        v = self._decode(codes.to(torch.int64), self._params())
        return v - self.shift if self.shift else v

    def _fake_quantize(self, x: Tensor) -> Tensor:
        """Decoding through a table of the ``2^b`` values (one gather instead of the element-wise
        decode: the same values, several times faster); the codes go straight to int64 indices."""
        self._check_calibrated()
        codes = self._encode(x.float() + self.shift, self._params()).to(torch.int64)
        table = self.dequantize(torch.arange(self.code_range()[1] + 1, device=codes.device))
        return table.take(codes)

    @staticmethod
    def _positive_max(u: Tensor) -> float:
        m = float(u.max())
        return m if m > 0 else 1.0
