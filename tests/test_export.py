"""FP32 ONNX export of tiny ViTs of every supported family, checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from tests.helpers import tiny_vit
from vitslim.errors import UserError
from vitslim.export.onnx_export import check_parity, export_onnx


def test_export_parity_every_family(tmp_path: Path, tiny_family: str) -> None:
    model = tiny_vit(tiny_family)
    path = export_onnx(model, tmp_path / f"{tiny_family}.onnx", (3, 32, 32))
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    for batch in (1, 5):  # dynamic batch dimension
        parity = check_parity(
            model, path, torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        )
        assert parity.samples == batch
        assert parity.max_abs_diff < 1e-4
        assert parity.top1_agreement == 1.0


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow the exporter cannot trace
                return x
            return -x

    with pytest.raises(UserError, match="Broken cannot be exported to ONNX"):
        export_onnx(Broken(), tmp_path / "broken.onnx", (3, 8, 8))
    assert list(tmp_path.iterdir()) == []
