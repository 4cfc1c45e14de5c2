"""PyTorch eager: the variant's model itself (a quantized one as fake quantization)."""

from __future__ import annotations

import functools
from typing import Any

from .base import Deployed, Runtime, Timed

__all__ = ["PyTorch"]


class PyTorch(Runtime):
    name = "pytorch"
    title = "PyTorch"
    deploy_rank = 30
    runs_model = True

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        import torch

        from vitslim.evaluate.device import synchronize
        from vitslim.evaluate.latency import torch_threads

        if deployed.model is None:
            raise ValueError(f"{deployed.name}: PyTorch times a model, not a file")
        model, device = deployed.model.eval(), deployed.device
        x = torch.randn(batch, *deployed.input_size, device=device)

        @torch.no_grad()
        def call(images: torch.Tensor) -> None:
            with torch_threads(threads):
                model(images)
            synchronize(device)

        return {"": Timed(functools.partial(call, x), str(device))}

    def ran_in(self, variant: dict[str, Any], device: str) -> str:
        quantized = (variant.get("onnx") or {}).get("format") == "qdq"
        return f"PyTorch {device}, {'fake-quantized' if quantized else 'fp32'}"
