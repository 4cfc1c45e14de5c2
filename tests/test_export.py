"""FP32 ONNX export of tiny ViTs of every supported family, checked in ONNX Runtime."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
import torch

from tests.helpers import tiny_vit
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.errors import UserError
from vitslim.export import onnx_export
from vitslim.export.onnx_export import export_onnx, save_onnx, trace_onnx, with_weights
from vitslim.export.validate import check_parity


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


INPUTS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def merged() -> tuple[torch.nn.Module, ir.Model]:
    """A tiny token-merging ViT and its traced graph (tracing is the slow part: done once)."""
    model = apply_token_reduction(tiny_vit("vit"), TokenMergeConfig(r=4))
    return model, trace_onnx(model, (3, 32, 32))


def test_light_optimization_folds_the_graph_and_keeps_outputs(tmp_path: Path, merged) -> None:
    """``optimize`` folds the shape arithmetic of a token-merging graph and lifts its constants
    to initializers; ONNX Runtime gives the same outputs as from the raw graph."""
    model, graph = merged
    raw = save_onnx(graph, tmp_path / "raw.onnx", optimize=False)
    light = save_onnx(graph, tmp_path / "light.onnx")
    raw_nodes, light_nodes = onnx.load(str(raw)).graph.node, onnx.load(str(light)).graph.node
    assert len(light_nodes) < 0.7 * len(raw_nodes)
    assert not [n for n in light_nodes if n.op_type == "Constant"]
    for path in (raw, light):
        parity = check_parity(model, path, INPUTS)
        assert parity.max_abs_diff < 1e-4 and parity.top1_agreement == 1.0


def test_traced_graph_takes_new_weights(tmp_path: Path, merged) -> None:
    """A graph traced once is written with the weights of a model that differs by its weights
    only; the traced graph itself is left as it was; a model of another shape is refused."""
    model, graph = merged
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for param in changed.parameters():
            param.mul_(1.5)
    for net, path in (
        (changed, save_onnx(with_weights(graph, changed), tmp_path / "changed.onnx")),
        (model, save_onnx(graph, tmp_path / "original.onnx")),
    ):
        parity = check_parity(net, path, INPUTS)
        assert parity.max_abs_diff < 1e-4 and parity.top1_agreement == 1.0
    assert check_parity(model, tmp_path / "changed.onnx", INPUTS).max_abs_diff > 1e-2
    with pytest.raises(ValueError, match="no state_dict entry"):
        with_weights(graph, tiny_vit("vit", embed_dim=48))


def test_exports_reuse_one_torchlib_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports share the exporter's registry of ONNX decompositions (built once, handed out as
    copies) and give byte for byte the graph an export that builds its own gives."""
    registration = pytest.importorskip("torch.onnx._internal.exporter._registration")
    model = tiny_vit("vit", depth=1)
    monkeypatch.setattr(onnx_export, "_TORCHLIB_REGISTRIES", {})
    original = registration.ONNXRegistry.__dict__["from_torchlib"]
    built = []

    def counting(cls, *args, **kwargs):
        built.append(args or kwargs)
        return original.__func__(cls, *args, **kwargs)

    monkeypatch.setattr(registration.ONNXRegistry, "from_torchlib", classmethod(counting))
    patched = registration.ONNXRegistry.__dict__["from_torchlib"]
    cached = trace_onnx(model, (3, 32, 32))
    assert len(built) == 1
    with monkeypatch.context() as m:
        m.setattr(onnx_export, "reused_torchlib_registry", contextlib.nullcontext)
        uncached = trace_onnx(model, (3, 32, 32))
    assert len(built) == 2
    cached, uncached = (ir.serde.serialize_model(g).SerializeToString() for g in (cached, uncached))
    assert cached == uncached
    assert registration.ONNXRegistry.__dict__["from_torchlib"] is patched  # restored after the export

    with onnx_export.reused_torchlib_registry():  # copies: what one export registers stays its own
        first = registration.ONNXRegistry.from_torchlib(opset_version=onnx_export.DEFAULT_OPSET)
        first.functions.clear()
        assert registration.ONNXRegistry.from_torchlib(opset_version=onnx_export.DEFAULT_OPSET).functions
    assert len(built) == 2  # the first export's, reused
    monkeypatch.setattr(onnx_export, "_registry_class", lambda: None)  # another torch: untouched
    with onnx_export.reused_torchlib_registry():
        assert registration.ONNXRegistry.__dict__["from_torchlib"] is patched


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow the exporter cannot trace
                return x
            return -x

    with pytest.raises(UserError, match="Broken cannot be exported to ONNX"):
        export_onnx(Broken(), tmp_path / "broken.onnx", (3, 8, 8))
    assert list(tmp_path.iterdir()) == []
