"""FP32 ONNX export of tiny ViTs of every supported family, checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from tests.helpers import tiny_vit
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
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


def test_light_optimization_folds_the_graph_and_keeps_outputs(tmp_path: Path) -> None:
    """``optimize`` folds the shape arithmetic of a token-merging graph and lifts its constants
    to initializers; ONNX Runtime gives the same outputs as from the raw export."""
    model = apply_token_reduction(tiny_vit("vit"), TokenMergeConfig(r=4))
    raw = export_onnx(model, tmp_path / "raw.onnx", (3, 32, 32), optimize=False)
    light = export_onnx(model, tmp_path / "light.onnx", (3, 32, 32))
    raw_nodes, light_nodes = onnx.load(str(raw)).graph.node, onnx.load(str(light)).graph.node
    assert len(light_nodes) < 0.7 * len(raw_nodes)
    assert not [n for n in light_nodes if n.op_type == "Constant"]
    inputs = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for path in (raw, light):
        parity = check_parity(model, path, inputs)
        assert parity.max_abs_diff < 1e-4 and parity.top1_agreement == 1.0


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow the exporter cannot trace
                return x
            return -x

    with pytest.raises(UserError, match="Broken cannot be exported to ONNX"):
        export_onnx(Broken(), tmp_path / "broken.onnx", (3, 8, 8))
    assert list(tmp_path.iterdir()) == []
