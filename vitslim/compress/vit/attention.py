"""The attention prologue and the explicit attention computation, with quantizer hook points.

``attention_operands(attn, x)`` splits timm ``Attention``'s q, k, v; ``explicit_attention(attn,
q, k, v, bias)`` computes ``softmax(q·kᵀ·scale + bias)·v`` and fake-quantizes its matmul operands
through the points the quantization patch installs on the attention module (``q_quant``,
``k_quant``, ``softmax_quant``, ``v_quant``). It is the one explicit path shared by the quantized
attention forward and the token-reduction patch's attention forward, so the two patches compose
in either order.

A calibration *tap* (``attn._vq_tap``, a callable) sees the float operands ``(q, k, v, bias)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = [
    "ATTENTION_POINTS",
    "TAP",
    "attention_gate",
    "attention_operands",
    "attention_output",
    "explicit_attention",
    "uses_explicit_attention",
]

#: Attribute names of the hook points on an attention module, by slot.
ATTENTION_POINTS = {"q": "q_quant", "k": "k_quant", "softmax": "softmax_quant", "v": "v_quant"}
#: Attribute holding a calibration tap ``tap(q, k, v, bias)`` on an attention module.
TAP = "_vq_tap"


def _point(attn: nn.Module, slot: str) -> nn.Module | None:
    return attn._modules.get(ATTENTION_POINTS[slot])


def uses_explicit_attention(attn: nn.Module) -> bool:
    """Whether ``attn`` must take the explicit path: an enabled hook point or a tap."""
    if attn.__dict__.get(TAP) is not None:
        return True
    return any(p is not None and p.enabled for p in (_point(attn, s) for s in ATTENTION_POINTS))


def _apply(attn: nn.Module, slot: str, x: Tensor) -> Tensor:
    point = _point(attn, slot)
    return x if point is None else point(x)


def attention_operands(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` [B, H, N, D] of timm ``Attention`` ``attn`` on ``x`` [B, N, C] (q/k norms applied).

    The heads are split token-major and each operand transposed on its own (an ONNX
    ``Transpose(0, 2, 1, 3)`` per operand, the layout of BERT-style graphs): OpenVINO folds those
    transposes into its fused attention, where timm's single 5-D permute stays a separate op.
    """
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return attn.q_norm(q), attn.k_norm(k), v


def attention_gate(attn: nn.Module, x: Tensor) -> Tensor | None:
    """The sigmoid gate of a gated timm ``Attention`` on its input ``x``, None without one."""
    gate = getattr(attn, "gate", None)
    return None if gate is None else gate(x).sigmoid()


def attention_output(attn: nn.Module, out: Tensor, gate: Tensor | None) -> Tensor:
    """timm ``Attention``'s epilogue on the [B, H, N, D] attention output: heads merged, norm,
    gate, projection."""
    B, _, N, _ = out.shape
    x = attn.norm(out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim))
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def explicit_attention(
    attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(softmax(q·kᵀ·attn.scale + bias) · v, attention map)`` for [B, H, N, D] operands.

    The map is returned after its quantizer (what ``attn @ v`` consumes) and before
    ``attn.attn_drop``.
    """
    tap: Callable[..., None] | None = attn.__dict__.get(TAP)
    if tap is not None:
        tap(q, k, v, bias)
    q, k = _apply(attn, "q", q), _apply(attn, "k", k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    probs = _apply(attn, "softmax", scores.softmax(dim=-1))
    out = attn.attn_drop(probs) @ _apply(attn, "v", v)
    return out, probs
