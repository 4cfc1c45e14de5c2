"""Test helpers: tiny random timm ViTs of several families, and small image folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from onnx import numpy_helper
from PIL import Image

from vitslim.cli import cli
from vitslim.compress.quant import QuantConfig, SiteSpec
from vitslim.compress.quant.stage import REDUCED_WEIGHT_BITS
from vitslim.evaluate.environment import int8_saturates
from vitslim.export.qdq import CODES_SUFFIX

# Tiny members of the timm ViT families vitslim supports: plain ViT, DeiT-style, DINOv2-style
# (layer-scale + register tokens) and a class-token-free model with average pooling.
TINY_VITS = {
    "vit": dict(model_name="vit_tiny_patch16_224"),
    "deit": dict(model_name="deit_tiny_patch16_224"),
    "dinov2_reg": dict(model_name="vit_small_patch14_reg4_dinov2", patch_size=8, init_values=1e-5),
    "avgpool": dict(model_name="vit_tiny_patch16_224", class_token=False, global_pool="avg"),
}
TINY_ARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=10)


def tiny_vit(family: str = "vit", seed: int = 0, **overrides) -> torch.nn.Module:
    """A random tiny timm ViT of ``family`` (depth 2, dim 64, 32x32 input), eval mode."""
    torch.manual_seed(seed)
    args = {**TINY_ARGS, **TINY_VITS[family], **overrides}
    return timm.create_model(args.pop("model_name"), pretrained=False, **args).eval()


def write_class_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> Path:
    """Small random RGB PNGs in ``root/<class>/``."""
    gen = torch.Generator().manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (20, 24, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def meaningful_vit(family: str = "vit", seed: int = 0, ln_spread: bool = False, **overrides) -> torch.nn.Module:
    """A tiny ViT with Linear weights redrawn at std 1/sqrt(fan_in) (timm's 0.02 init gives
    near-uniform attention) and layer-scale 0.5; with ``ln_spread``, random LayerNorm affines
    whose channel scales spread over orders of magnitude (what the post-LN reparameterisation
    is for; they also make the attention maps nearly one-hot)."""
    model = tiny_vit(family, seed=seed, **overrides)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / mod.weight.shape[1] ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            elif isinstance(mod, torch.nn.LayerNorm) and name.startswith("blocks") and ln_spread:
                mod.weight.copy_(torch.exp(torch.randn(mod.weight.shape, generator=g)))
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g))
            elif hasattr(mod, "gamma"):
                mod.gamma.fill_(0.5)
    return model


def uniform_cfg(w_bits: int, a_bits: int, **changes) -> QuantConfig:
    """``QuantConfig.uniform`` with a 16-point weight clipping search (the default 100-point
    per-channel search dominates the run time of these tests at 8 bits)."""
    weight = SiteSpec("uniform", w_bits, {"symmetric": True, "channel_axis": 0, "grid": 16})
    return QuantConfig.uniform(w_bits, a_bits, weight=weight, **changes)


def for_this_cpu(config: QuantConfig) -> QuantConfig:
    """``config`` as the quant stage applies it on this machine: weights kept to 7 bits where the
    CPU's int8 kernels saturate (``reduce_range: auto``)."""
    if not int8_saturates():
        return config
    return dataclasses.replace(config, max_weight_bits=REDUCED_WEIGHT_BITS)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1).mean())


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def stored_weight(graph: onnx.GraphProto, site: str) -> tuple[np.ndarray, np.ndarray, onnx.NodeProto]:
    """The integer codes and scales a Q/DQ export stores for weight ``site``, and their DequantizeLinear."""
    name = site[: -len(".weight")] + CODES_SUFFIX
    inits = {t.name: t for t in graph.initializer}
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name)
    return numpy_helper.to_array(inits[name]), numpy_helper.to_array(inits[dq.input[1]]), dq


def reducing_scatter_nodes(path: str | Path) -> list[onnx.NodeProto]:
    """Scatter nodes of an ONNX file that accumulate (a reduction, or ScatterND's duplicate-index
    semantics): ONNX has no 'mean' reduction and TensorRT's scatter layer takes none. A plain
    ScatterElements overwriting distinct positions runs in every runtime."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node) + [n for fn in model.functions for n in fn.node]
    reducing = []
    for node in nodes:
        if not (node.op_type.startswith("Scatter") or node.op_type == "IndexPut"):
            continue
        reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
        if node.op_type != "ScatterElements" or reduction != "none":
            reducing.append(node)
    return reducing


# The command line: tiny random ViTs by their CLI arguments, a quiet run, one clean user error.
#: a 2-block ViT on 32x32 inputs with 8x8 patches
TINY = [
    "--model",
    "vit_tiny_patch16_224",
    "--random-init",
    "--model-arg",
    "img_size=32",
    "--model-arg",
    "patch_size=8",
    "--model-arg",
    "depth=2",
    "--model-arg",
    "embed_dim=64",
    "--model-arg",
    "num_heads=2",
]


def run_cli(*args: str) -> Result:
    """``vitslim --quiet ARGS`` in-process."""
    return CliRunner().invoke(cli, ["--quiet", *args])


def assert_user_error(result, pattern: str) -> None:
    """One clear error line on stderr (after click's usage hint, for option errors), exit code 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("Error:")] == [lines[-1]], result.stderr
    assert pattern in lines[-1], result.stderr


#: blocks of :func:`tiny`
TINY_DEPTH = 2
#: latency settings that keep a compress run short
FAST = ["--runs", "2", "--warmup", "0", "--batch-sizes", "1,2", "--threads", "1"]


def tiny(depth: int = TINY_DEPTH) -> list[str]:
    """A random ViT with 8x8 patches on 64x64 inputs: 64 patch tokens + the class token."""
    args = {"img_size": 64, "patch_size": 8, "depth": depth, "embed_dim": 32, "num_heads": 2}
    model_args = [part for key, value in args.items() for part in ("--model-arg", f"{key}={value}")]
    return ["--model", "vit_tiny_patch16_224", "--random-init", "--num-classes", "2", *model_args]


class Wrapped(torch.nn.Module):
    """A module as the only child of another (an export module traced as a model of its own)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
