"""Unmerging: the full patch map of a token-reduced ViT (shape, exactness, positions), and the
feature outputs (pooled, patch) exported as named ONNX outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import torch

from tests.helpers import tiny_vit
from vitslim.compress.tokens import apply_token_reduction
from vitslim.compress.tokens.config import TokenMergeConfig, TokenPruneConfig
from vitslim.compress.tokens.merge import bipartite_soft_matching, merge_tokens
from vitslim.compress.tokens.prune import evit_select, prune_tokens
from vitslim.compress.tokens.unmerge import PositionTracker, merge_rows, nearest_kept, prune_rows, unmerge_patches
from vitslim.evaluate.accuracy import ort_runner, torch_runner
from vitslim.export.onnx_export import export_onnx
from vitslim.models.features import FeatureOutputs, split_outputs


def test_merge_rows_point_every_token_at_the_token_it_ended_in() -> None:
    x = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(0))
    plan = bipartite_soft_matching(x, r=2, num_prefix=1)
    merged, _ = merge_tokens(plan, x)
    rows = merge_rows(plan)
    assert rows.shape == (2, 9) and merged.shape == (2, 7, 4)
    for b in range(2):
        for src, dst in zip(plan.src[b].tolist(), plan.dst[b].tolist(), strict=True):
            assert rows[b, src] == rows[b, dst]  # a merged token and its partner share one row
            assert torch.allclose(merged[b, rows[b, dst]], (x[b, src] + x[b, dst]) / 2)
        untouched = [i for i in range(9) if i not in plan.src[b].tolist() + plan.dst[b].tolist()]
        assert torch.equal(merged[b, rows[b, untouched]], x[b, untouched])  # the others keep their values
    unmerged = unmerge_patches(merged, rows, 1)
    assert unmerged.shape == (2, 8, 4) and torch.equal(unmerged, merged.gather(1, rows[:, 1:, None].expand(-1, -1, 4)))


def test_prune_rows_send_dropped_tokens_to_the_fused_token() -> None:
    cls_attn = torch.tensor([[0.0, 0.5, 0.1, 0.3, 0.05, 0.05]])
    plan = evit_select(cls_attn, keep=2, num_prefix=1)
    out, _ = prune_tokens(plan, torch.randn(1, 6, 3))
    rows = prune_rows(plan)
    assert rows.tolist() == [[0, 1, 3, 2, 3, 3]]  # kept 1 and 3 in order, the others fused (row 3)
    assert out.shape[1] == 4


def test_pruned_positions_take_the_nearest_kept_token() -> None:
    positions = torch.tensor([[0, 1, 3, 2, 3, 3]])  # patches 0 and 2 kept alone, 1, 3 and 4 fused in row 3
    filled = nearest_kept(positions, num_prefix=1, grid=(1, 5))
    assert filled.tolist() == [[0, 1, 1, 2, 2, 2]]  # 1: patches 0 and 2 are as near, the first wins
    grid = nearest_kept(torch.tensor([[0, 2, 2, 1, 2]]), num_prefix=1, grid=(2, 2))
    assert grid.tolist() == [[0, 1, 1, 1, 1]]  # on a 2x2 grid every position is next to the lone kept one


def test_positions_compose_over_steps() -> None:
    tracker = PositionTracker()
    tracker.follow(torch.tensor([[0, 1, 1, 2]]))  # 4 tokens -> 3
    tracker.follow(torch.tensor([[0, 0, 1]]))  # 3 -> 2
    assert tracker.positions.tolist() == [[0, 0, 0, 1]]
    x = torch.tensor([[[1.0], [2.0]]])
    assert unmerge_patches(x, tracker.positions, 1).tolist() == [[[1.0], [1.0], [2.0]]]
    assert torch.equal(unmerge_patches(x, None, 1), x[:, 1:])


CONFIGS = [TokenMergeConfig(r=0), TokenMergeConfig(r=3), TokenPruneConfig(keep_rate=0.5, layers=(0,))]


@pytest.mark.parametrize("config", CONFIGS)
def test_patch_map_keeps_the_unreduced_shape(config) -> None:
    model = tiny_vit("vit", img_size=32, patch_size=8, num_classes=5)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = FeatureOutputs(model, "both", classifier=True)
    pooled, patch = plain(images)
    with torch.no_grad():
        tokens = model.forward_features(images)
    assert torch.equal(patch, tokens[:, 1:]) and torch.equal(pooled, model.forward_head(tokens, pre_logits=True))
    apply_token_reduction(model, config)
    reduced_pooled, reduced_patch = plain(images)
    assert reduced_patch.shape == patch.shape == (2, 16, model.embed_dim) and reduced_pooled.shape == pooled.shape
    exact = isinstance(config, TokenMergeConfig) and config.r == 0
    assert torch.equal(reduced_patch, patch) == exact  # nothing merged: the same map, bit for bit
    if not exact:  # reduced: positions share values (fewer distinct rows), but every row is one of the final tokens
        assert torch.unique(reduced_patch[0], dim=0).shape[0] < 16


def test_feature_outputs_export_as_named_outputs(tmp_path: Path) -> None:
    """Both outputs of a ViT merged in two blocks, in ONNX Runtime and OpenVINO (16 images: OpenVINO
    once returned zeros from the 9th image of a batch on, after a second merge)."""
    model = tiny_vit("vit", img_size=32, patch_size=8, num_classes=0)
    apply_token_reduction(model, TokenMergeConfig(r=3))
    wrapped = FeatureOutputs(model, "both", classifier=False)
    assert list(wrapped.state_dict()) == list(model.state_dict())  # same names: sites and initializers unchanged
    path = export_onnx(wrapped, tmp_path / "m.onnx", (3, 32, 32))
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["pooled", "patch"]
    assert [d.dim_value for d in graph.output[1].type.tensor_type.shape.dim][1:] == [16, model.embed_dim]
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours, theirs = torch_runner(wrapped)(images), ort_runner(str(path))(images)
    assert float((ours - theirs).abs().max()) < 1e-4
    parts = split_outputs(theirs, wrapped.layout((3, 32, 32)))
    assert parts["pooled"].shape == (16, model.embed_dim) and parts["patch"].shape == (16, 16, model.embed_dim)
    if importlib.util.find_spec("openvino") is not None:
        from vitslim.evaluate.openvino_runtime import ov_runner

        assert float((ours - ov_runner(path, precision="f32")(images)).abs().max()) < 1e-4
