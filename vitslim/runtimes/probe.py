"""What pays on this machine: a few seconds of measurement on the model's own first block.

The probe exports the model cut to its first transformer block (stem, one block, norm and head:
the real weights and token count) three times: in float; with int8 Linears (W8A8 as the ``cpu``
recipe lays it out: per-channel int8 weights, per-tensor activations); and with int8 ``q @ kᵀ``
too (symmetric q and k, the layout OpenVINO fuses into an int8 attention kernel). The three files
are timed side by side in each runtime (:mod:`vitslim.runtimes.timing`: interleaved, paired
rounds), and each layer kind is judged in the context a runtime fuses it in: ``linear`` (int8
Linears against float) and ``attention`` (int8 ``q @ kᵀ`` against the int8-Linear file), each
against its own noise (:mod:`vitslim.evaluate.speedup`); OpenVINO's default float precision (bf16
on CPUs that have it) against f32 the same way (layer ``block``). One-layer graphs cannot see the
fused attention kernel, which is where OpenVINO's int8 attention pays.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitslim.errors import UserError
from vitslim.evaluate.speedup import speedup
from vitslim.runtimes import Deployed
from vitslim.runtimes.timing import time_variants

__all__ = ["LAYERS", "FILES", "ProbeShape", "probe_shape", "first_block", "probe_files", "probe", "int8_pays"]

#: layer kind -> (the probe file with it in int8, the file it is compared with)
LAYERS = {"linear": ("int8-linear", "fp32"), "attention": ("int8-attention", "int8-linear")}
#: the probe's files, in the order they are timed
FILES = ("fp32", "int8-linear", "int8-attention")
#: random images the int8 files are calibrated on (their speed, not their accuracy, is measured)
CALIBRATION_IMAGES = 4


@dataclass(frozen=True)
class ProbeShape:
    """The model's shapes that matter for its matmuls: tokens per image, width, MLP hidden width, heads."""

    tokens: int
    dim: int
    hidden: int
    heads: int


def probe_shape(model: torch.nn.Module, input_size: tuple[int, ...]) -> ProbeShape:
    """The shapes of the model's first MLP Linear (its input: tokens x dim) and attention heads,
    read from one forward pass on a random image."""
    fc1 = next((m for n, m in model.named_modules() if n.endswith("mlp.fc1")), None)
    attn = next((m for m in model.modules() if hasattr(m, "num_heads")), None)
    if fc1 is None or attn is None:
        raise UserError("the model has no '*.mlp.fc1' Linear or no module with 'num_heads': not a ViT vitslim probes")
    seen: list[tuple[int, ...]] = []
    handle = fc1.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, *input_size, device=next(model.parameters()).device))
    finally:
        handle.remove()
    return ProbeShape(tokens=seen[0][1], dim=fc1.in_features, hidden=fc1.out_features, heads=int(attn.num_heads))


def first_block(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with only its first transformer block (``model.blocks[0]``); the rest of
    the model (patch embedding, tokens, final norm, head) is kept, and ``model`` is left as it was."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise UserError("the model has no 'blocks' sequence of transformer blocks: not a ViT vitslim probes")
    model.blocks = blocks[:1]
    try:
        return copy.deepcopy(model).eval().cpu()
    finally:
        model.blocks = blocks


def probe_files(model: nn.Module, input_size: tuple[int, ...], folder: Path, seed: int = 0) -> dict[str, Path]:
    """The probe's ONNX files of ``model``'s first block (:data:`FILES`, module docstring) in ``folder``."""
    from vitslim.compress.quant import QuantConfig, quantize_
    from vitslim.compress.quant.placement import quant_points
    from vitslim.export.onnx_export import export_onnx
    from vitslim.export.qdq import export_quantized_onnx

    block = first_block(model)
    paths = {"fp32": export_onnx(block, folder / "fp32.onnx", input_size)}
    images = torch.randn(CALIBRATION_IMAGES, *input_size, generator=torch.Generator().manual_seed(seed))
    quantize_(block, QuantConfig.preset("w8a8-cpu"), [images], search="minmax", progress=False, seed=seed)
    attention = export_quantized_onnx(block, folder / "int8-attention.onnx", input_size).path
    for point in quant_points(block).values():
        point.enabled = point.kind != "qk"
    paths["int8-linear"] = export_quantized_onnx(block, folder / "int8-linear.onnx", input_size).path
    paths["int8-attention"] = attention
    return paths


def probe(
    model: nn.Module,
    input_size: tuple[int, ...],
    runtimes: Sequence[str],
    batch_sizes: Sequence[int] = (1, 16),
    threads: int = 0,
    runs: int = 15,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per batch size, runtime and layer kind: int8 against float (``pays``: faster beyond the
    noise), and for runtimes with a reduced default float precision (OpenVINO's bf16) that precision
    against f32; every row with both p50s, the ratio, its per-round range and its verdict."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = probe_files(model, input_size, Path(tmp))
        deployed = [
            Deployed(name, None, paths[name], tuple(input_size), torch.device("cpu"), baseline=name == "fp32")
            for name in FILES
        ]
        latency = time_variants(deployed, runtimes, batch_sizes, threads, warmup=2, runs=runs, progress=progress)
    return [row for batch in batch_sizes for runtime in runtimes for row in _rows(latency, runtime, batch)]


def _rows(latency: dict[str, list], runtime: str, batch: int) -> list[dict[str, Any]]:
    """The probe's rows of one runtime and batch size from :func:`time_variants`' latency."""
    entries = {name: [e for e in latency[name] if (e.runtime, e.batch) == (runtime, batch)] for name in FILES}
    rows = [
        _row(runtime, layer, batch, "int8", entries[base][0], entries[file][0])
        for layer, (file, base) in LAYERS.items()
    ]
    if len(entries["fp32"]) > 1:  # also timed in exact f32: the default is a reduced precision (bf16)
        reduced = entries["fp32"][0].device.removeprefix("CPU (").removesuffix(")")
        rows.append(_row(runtime, "block", batch, reduced, entries["fp32"][1], entries["fp32"][0]))
    return rows


def _row(runtime: str, layer: str, batch: int, precision: str, base: Any, faster: Any) -> dict[str, Any]:
    judged = speedup(base.to_dict(), faster.to_dict())
    return {
        "runtime": runtime,
        "layer": layer,
        "batch": batch,
        "precision": precision,
        "against": base.device,
        "base_p50_ms": base.p50_ms,
        "p50_ms": faster.p50_ms,
        "speedup": judged.ratio,
        "round_range": [judged.low, judged.high],
        "verdict": judged.verdict,
        "pays": judged.verdict == "faster",
    }


def int8_pays(rows: list[dict[str, Any]], runtime: str, layer: str, batch: int) -> bool | None:
    """Whether the probe found int8 faster for ``layer`` in ``runtime`` at ``batch`` (None: not probed)."""
    return next(
        (
            r["pays"]
            for r in rows
            if (r["runtime"], r["layer"], r["batch"], r["precision"]) == (runtime, layer, batch, "int8")
        ),
        None,
    )
