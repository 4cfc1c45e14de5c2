"""Float-equivalent reparameterisations that make a ViT easier to quantize.

* Post-LayerNorm (RepQ-ViT): LayerNorm outputs have wildly different ranges per channel.
  With channel-wise scales ``s_c`` and zero points ``z_c`` calibrated on the LN output
  (``min_c = -z_c·s_c``) and a per-tensor target ``s̃, z̃``: ``r = s_c/s̃``,
  ``b = min_c/r - min̄`` (``min̄ = -z̃·s̃``). The LN then outputs ``y' = y/r - b``
  (``γ ← γ/r``, ``β ← β/r - b``), so every channel spans the same range and a per-tensor
  quantizer fits; each following Linear undoes it: ``W y + c = W' y' + c'`` with
  ``W' = W·diag(r)`` (columns scaled) and ``c' = c + W'·b``. Targets: ``"mean"`` of ``s_c, z_c``
  (RepQ-ViT), ``"median"``, or ``"mad"``: the mean over the channels whose scale lies within
  3 scaled MADs of the median (robust to outlier channels, after DopQ-ViT's MOSF idea).
* Attention output: the same folding on ``proj``'s input, with v's rows of ``qkv`` in the
  LayerNorm's role (``v ← v/r - b`` passes through ``attn @ v`` unchanged because every
  attention row sums to one).
* q/k rotation: ``q ← q·R``, ``k ← k·R`` in every head with one orthogonal ``R`` (Hadamard
  when the head size is a power of two), folded into ``qkv``'s q and k rows (``W ← Rᵀ·W``,
  ``c ← Rᵀ·c``): ``q·kᵀ = q·R·Rᵀ·kᵀ`` is unchanged, and a few large channels are spread over
  all of them before the per-tensor q and k quantizers (the rotation idea of QuaRot, applied
  to the attention scores).
* Post-GELU shift (AdaLog): the MLP activation outputs ``GELU(x) + c`` (``c = 0.16997``, so
  the values are non-negative for the log quantizers) and fc2's bias absorbs it:
  ``bias ← bias - c·W.sum(1)``.

All change weights in place and are recorded on the model (``reparam_record``) so that a
saved quantized model can be rebuilt; float outputs are unchanged up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vitslim.compress.vit.patching import patched_class

from .base import MIN_SCALE
from .logarithmic import GELU_SHIFT
from .samplers import collect_rows
from .sites import layernorm_consumers
from .uniform import UniformQuantizer

__all__ = [
    "fold_attention_output",
    "fold_gelu_shift",
    "fold_layernorm",
    "layernorm_factors",
    "reparameterize_attentions",
    "reparameterize_layernorms",
    "head_rotation",
    "rotate_attention_qk",
    "rotate_qk",
    "reparam_record",
    "apply_reparam_structure",
]

_RECORD = "_vq_reparam"
_ORIG = "_vq_shift_original_class"
#: Smallest per-channel ratio ``r`` (guards constant channels).
MIN_RATIO = 1e-4


def reparam_record(model: nn.Module) -> dict[str, Any]:
    """What was folded into ``model`` (plain data; empty when nothing was)."""
    return model.__dict__.get(_RECORD, {})


def _record(model: nn.Module, key: str, init: dict[str, Any]) -> dict[str, Any]:
    return model.__dict__.setdefault(_RECORD, {}).setdefault(key, init)


class _ShiftedActivation:
    """Mixin: the activation's output plus ``gelu_shift``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.gelu_shift


def _shift_activation(act: nn.Module, shift: float) -> None:
    act.__class__ = patched_class(type(act), _ShiftedActivation, _ORIG, "Shifted", __name__)
    act.gelu_shift = float(shift)


def _ensure_bias(linear: nn.Linear) -> bool:
    """Give ``linear`` a zero bias if it has none; returns whether one was added."""
    if linear.bias is not None:
        return False
    w = linear.weight
    linear.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)
    return True


@torch.no_grad()
def fold_gelu_shift(model: nn.Module, mlps: Iterable[str] | None = None, shift: float = GELU_SHIFT) -> list[str]:
    """Make each MLP's GELU output ``GELU(x) + shift`` and fold ``-shift`` into fc2's bias.

    ``mlps``: module names (default: every block's ``mlp`` with a GELU, no hidden norm and no
    shift yet). Returns the MLPs folded.
    """
    if mlps is None:
        mlps = [f"blocks.{i}.mlp" for i in range(len(model.blocks))]
    record = _record(model, "gelu_shift", {"shift": float(shift), "mlps": [], "bias_added": []})
    if record["shift"] != float(shift):
        raise ValueError(f"model already carries a GELU shift of {record['shift']}")
    done = []
    for name in mlps:
        mlp = model.get_submodule(name)
        if not isinstance(mlp.act, nn.GELU) or getattr(mlp.act, "gelu_shift", None) is not None:
            continue
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            continue  # a norm between the activation and fc2 would not pass the shift through
        fc2 = mlp.fc2
        if _ensure_bias(fc2):
            record["bias_added"].append(f"{name}.fc2")
        fc2.bias.copy_((fc2.bias.double() - shift * fc2.weight.double().sum(1)).to(fc2.bias.dtype))
        _shift_activation(mlp.act, shift)
        record["mlps"].append(name)
        done.append(name)
    return done


def layernorm_factors(scale: Tensor, zero_point: Tensor, target: str = "mean") -> tuple[Tensor, Tensor]:
    """``(r, b)`` of the post-LN reparameterisation from channel-wise ``scale``, ``zero_point``."""
    s, z = scale.double(), zero_point.double()
    if target == "mean":
        s_t, z_t = s.mean(), z.mean()
    elif target == "median":
        s_t, z_t = s.median(), z.median()
    elif target == "mad":
        med = s.median()
        mad = (s - med).abs().median()
        inliers = (s - med).abs() <= 3.0 * 1.4826 * mad
        s_t, z_t = s[inliers].mean(), z[inliers].mean()
    else:
        raise ValueError(f"unknown target {target!r}")
    r = (s / s_t.clamp_min(MIN_SCALE)).clamp_min(MIN_RATIO)
    b = (-z * s) / r - (-z_t * s_t)
    return r, b


@torch.no_grad()
def fold_layernorm(norm: nn.LayerNorm, linears: Sequence[nn.Linear], r: Tensor, b: Tensor) -> list[nn.Linear]:
    """LN output ``y → y/r - b``; each Linear compensates (``W ← W·r``, ``bias ← bias + W·b``).

    Returns the Linears that needed a (zero) bias first.
    """
    if norm.weight is None or norm.bias is None:
        raise ValueError("the post-LN reparameterisation needs a LayerNorm with an affine weight and bias")
    r, b = r.double().to(norm.weight.device), b.double().to(norm.weight.device)
    norm.weight.copy_((norm.weight.double() / r).to(norm.weight.dtype))
    norm.bias.copy_((norm.bias.double() / r - b).to(norm.bias.dtype))
    return _compensate(linears, r, b)


def _compensate(linears: Sequence[nn.Linear], r: Tensor, b: Tensor) -> list[nn.Linear]:
    """Each Linear reading ``y/r - b`` instead of ``y``: ``W ← W·r``, ``bias ← bias + W·b``.
    Returns the Linears that needed a (zero) bias first."""
    added = []
    for lin in linears:
        if _ensure_bias(lin):
            added.append(lin)
        w = lin.weight.double() * r[None, :]
        lin.bias.copy_((lin.bias.double() + w @ b).to(lin.bias.dtype))
        lin.weight.copy_(w.to(lin.weight.dtype))
    return added


def _channel_factors(rows: Tensor, bits: int, target: str, seed: int) -> tuple[Tensor, Tensor]:
    """``(r, b)`` from channel-wise ``bits``-bit ranges calibrated on ``rows`` (see :func:`layernorm_factors`)."""
    q = UniformQuantizer(bits, symmetric=False, channel_axis=-1, seed=seed).calibrate(rows)
    return layernorm_factors(q.scale, q.zero_point, target)


@torch.no_grad()
def reparameterize_layernorms(
    model: nn.Module,
    batches: Sequence[Tensor],
    bits: Mapping[str, int],
    *,
    target: str = "mean",
    samples: int = 2048,
    seed: int = 0,
) -> list[str]:
    """RepQ-ViT post-LN reparameterisation of the block LayerNorms named in ``bits`` (norm name →
    bits of the quantizer on its output), calibrated on ``batches``. Returns the norms folded."""
    consumers = layernorm_consumers(model)
    names = [n for n in bits if n in consumers]
    rows = collect_rows(model, {n: model.get_submodule(n) for n in names}, batches, samples=samples, seed=seed)
    record = _record(model, "layernorm", {"target": target, "norms": [], "bias_added": []})
    for name in names:
        linears = [model.get_submodule(c) for c in consumers[name]]
        r, b = _channel_factors(rows[name], bits[name], target, seed)
        added = fold_layernorm(model.get_submodule(name), linears, r, b)
        record["bias_added"].extend(c for c, lin in zip(consumers[name], linears, strict=True) if lin in added)
        record["norms"].append(name)
    return names


@torch.no_grad()
def fold_attention_output(attn: nn.Module, r: Tensor, b: Tensor) -> list[nn.Linear]:
    """Attention output ``o → o/r - b``: v's rows of ``qkv`` give ``v/r - b`` (exact: every
    attention row sums to one), ``proj`` compensates (``W ← W·r``, ``bias ← bias + W·b``).

    Returns the Linears (``qkv``, ``proj``) that needed a (zero) bias first.
    """
    qkv, proj = attn.qkv, attn.proj
    rows = slice(qkv.out_features - proj.in_features, qkv.out_features)
    r, b = r.double().to(qkv.weight.device), b.double().to(qkv.weight.device)
    added = [qkv] if _ensure_bias(qkv) else []
    qkv.weight[rows] = (qkv.weight[rows].double() / r[:, None]).to(qkv.weight.dtype)
    qkv.bias[rows] = (qkv.bias[rows].double() / r - b).to(qkv.bias.dtype)
    return added + _compensate([proj], r, b)


@torch.no_grad()
def reparameterize_attentions(
    model: nn.Module,
    batches: Sequence[Tensor],
    bits: Mapping[str, int],
    *,
    target: str = "mean",
    samples: int = 2048,
    seed: int = 0,
) -> list[str]:
    """The post-LN reparameterisation applied to the attention outputs (``proj``'s inputs) of the
    attentions named in ``bits`` (attention name → bits of ``proj``'s input quantizer), calibrated
    on ``batches``: channel ranges folded into v's rows of ``qkv`` and ``proj``'s columns
    (:func:`fold_attention_output`). Attentions with a norm on their output are skipped. Returns
    the attentions folded."""
    names = [n for n in bits if isinstance(getattr(model.get_submodule(n), "norm", nn.Identity()), nn.Identity)]
    projs = {n: model.get_submodule(f"{n}.proj") for n in names}
    rows = collect_rows(model, projs, batches, samples=samples, seed=seed, inputs=True)
    record = _record(model, "attention", {"target": target, "attentions": [], "bias_added": []})
    for name in names:
        attn = model.get_submodule(name)
        added = fold_attention_output(attn, *_channel_factors(rows[name], bits[name], target, seed))
        record["bias_added"].extend(f"{name}.{leaf}" for leaf in ("qkv", "proj") if getattr(attn, leaf) in added)
        record["attentions"].append(name)
    return names


def head_rotation(size: int, seed: int = 0) -> Tensor:
    """An orthogonal ``size x size`` matrix: Sylvester's Hadamard matrix over ``sqrt(size)`` when
    ``size`` is a power of two, else a seeded random orthogonal one (float64)."""
    if size & (size - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < size:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
        return h / math.sqrt(size)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@torch.no_grad()
def rotate_attention_qk(attn: nn.Module, rotation: Tensor) -> None:
    """``q ← q·R`` and ``k ← k·R`` in every head of a timm ``Attention``, folded into ``qkv``."""
    rows = 2 * attn.num_heads * attn.head_dim
    r = rotation.to(torch.float64)
    w = attn.qkv.weight[:rows].double().reshape(2 * attn.num_heads, attn.head_dim, -1)
    attn.qkv.weight[:rows] = torch.einsum("ji,hjc->hic", r, w).reshape(rows, -1).to(attn.qkv.weight.dtype)
    if attn.qkv.bias is not None:
        b = attn.qkv.bias[:rows].double().reshape(2 * attn.num_heads, attn.head_dim)
        attn.qkv.bias[:rows] = (b @ r).reshape(-1).to(attn.qkv.bias.dtype)


def rotate_qk(model: nn.Module, names: Iterable[str], seed: int = 0) -> list[str]:
    """:func:`rotate_attention_qk` on the attentions ``names`` whose q and k see no norm (a
    LayerNorm on q or k does not commute with a rotation); returns those rotated."""
    rotated = []
    for name in names:
        attn = model.get_submodule(name)
        if all(isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm")):
            rotate_attention_qk(attn, head_rotation(attn.head_dim, seed))
            rotated.append(name)
    record = _record(model, "qk_rotation", {"attentions": []})
    record["attentions"].extend(rotated)
    return rotated


def apply_reparam_structure(model: nn.Module, record: Mapping[str, Any]) -> None:
    """Rebuild the structural part of a ``record`` on a fresh model (added biases, shifted
    activations); the folded values come with the state dict loaded afterwards."""
    gelu = record.get("gelu_shift")
    folds = [record.get(key) or {} for key in ("layernorm", "attention", "gelu_shift")]
    added = [name for fold in folds for name in fold.get("bias_added", [])]
    for name in added:
        _ensure_bias(model.get_submodule(name))
    if gelu:
        for name in gelu["mlps"]:
            _shift_activation(model.get_submodule(name).act, gelu["shift"])
    model.__dict__[_RECORD] = {k: dict(v) for k, v in record.items()}
