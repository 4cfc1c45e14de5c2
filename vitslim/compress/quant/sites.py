"""Quantization sites of a timm Vision Transformer and their kinds.

A *site* is one tensor that gets fake-quantized: a weight (every Linear and the patch
embedding conv), the input of a Linear, or an operand of an attention matmul. Each has a
stable name (``blocks.3.attn.qkv.weight``, ``blocks.3.mlp.fc2.input``, ``blocks.3.attn.softmax``)
and a kind, which is what a :class:`~vitslim.compress.quant.config.QuantConfig` configures:

==============  ==========================================================================
kind            sites
==============  ==========================================================================
weight          ``<linear>.weight`` of every Linear, ``patch_embed.proj.weight``
post_ln         ``attn.qkv.input``, ``mlp.fc1.input`` (LayerNorm outputs)
post_gelu       ``mlp.fc2.input`` (when the MLP's activation is GELU)
post_softmax    ``attn.softmax``: the attention map entering ``attn @ v``
qk              ``attn.q``, ``attn.k``: the operands of ``q @ kᵀ``
v               ``attn.v``: the value operand of ``attn @ v``
generic         other Linear inputs: ``attn.proj.input`` (attention output), ``head.input``...
==============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vitslim.compress.vit.patching import check_vit

__all__ = [
    "SITE_KINDS",
    "ACTIVATION_KINDS",
    "ATTENTION_SLOTS",
    "Site",
    "find_sites",
    "layernorm_consumers",
]

SITE_KINDS = ("weight", "post_ln", "post_gelu", "post_softmax", "qk", "v", "generic")
ACTIVATION_KINDS = SITE_KINDS[1:]
#: Attention matmul operands, in the order the attention computes them, with their kinds.
ATTENTION_SLOTS = {"q": "qk", "k": "qk", "softmax": "post_softmax", "v": "v"}


@dataclass(frozen=True)
class Site:
    """One quantization site: ``name == f"{module}.{slot}"``."""

    name: str
    kind: str
    module: str
    slot: str

    @property
    def is_weight(self) -> bool:
        return self.slot == "weight"


def _is_gelu(module: nn.Module) -> bool:
    return isinstance(module, nn.GELU)


def _input_kind(name: str, blocks: dict[str, nn.Module]) -> str:
    """Kind of the input of the Linear called ``name``."""
    prefix, _, leaf = name.rpartition(".")
    owner = prefix.rpartition(".")[0]
    if owner in blocks:
        if prefix.endswith(".attn") and leaf in ("qkv", "gate"):
            return "post_ln"
        if prefix.endswith(".mlp") and leaf == "fc1":
            return "post_ln"
        if prefix.endswith(".mlp") and leaf == "fc2":
            mlp = blocks[owner].mlp
            if _is_gelu(mlp.act) and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
                return "post_gelu"
    return "generic"


def find_sites(model: nn.Module) -> list[Site]:
    """All quantization sites of a timm ViT, in forward order within each block.

    Covers the patch-embedding conv weight, every ``nn.Linear`` (weight and input: qkv, proj,
    fc1, fc2, heads including ``head_dist``, attention-pool layers) and the four attention
    matmul operands of every block.
    """
    check_vit(model, "quantization")
    blocks = {f"blocks.{i}": blk for i, blk in enumerate(model.blocks)}
    sites: list[Site] = []
    conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(conv, nn.Conv2d):
        sites.append(Site("patch_embed.proj.weight", "weight", "patch_embed.proj", "weight"))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            sites.append(Site(f"{name}.input", _input_kind(name, blocks), name, "input"))
            sites.append(Site(f"{name}.weight", "weight", name, "weight"))
    return _with_attention(sites, blocks)


def _with_attention(sites: list[Site], blocks: dict[str, nn.Module]) -> list[Site]:
    """Insert each block's attention matmul sites right after its qkv sites."""
    out: list[Site] = []
    for site in sites:
        out.append(site)
        if site.slot == "weight" and site.module.endswith(".attn.qkv") and site.module[: -len(".attn.qkv")] in blocks:
            attn = site.module[: -len(".qkv")]
            out.extend(Site(f"{attn}.{slot}", kind, attn, slot) for slot, kind in ATTENTION_SLOTS.items())
    return out


def layernorm_consumers(model: nn.Module) -> dict[str, list[str]]:
    """Each block LayerNorm mapped to the Linears reading its output
    (``norm1``: ``attn.qkv`` and ``attn.gate`` if any; ``norm2``: ``mlp.fc1``)."""
    check_vit(model, "quantization")
    out: dict[str, list[str]] = {}
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        if isinstance(blk.norm1, nn.LayerNorm):
            out[f"{p}.norm1"] = [f"{p}.attn.qkv"] + (
                [f"{p}.attn.gate"] if getattr(blk.attn, "gate", None) is not None else []
            )
        if isinstance(blk.norm2, nn.LayerNorm) and isinstance(getattr(blk.mlp, "fc1", None), nn.Linear):
            out[f"{p}.norm2"] = [f"{p}.mlp.fc1"]
    return out
