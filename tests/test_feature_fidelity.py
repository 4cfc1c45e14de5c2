"""Feature fidelity: cosines (mean, worst 1%), neighbour recall and kNN top-1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitslim.evaluate.features import feature_fidelity, knn_top1, neighbour_recall


def _clusters(n_per: int = 8, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 4
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + torch.randn(len(labels), dim, generator=gen), labels


def test_identical_features_are_perfect() -> None:
    pooled, labels = _clusters()
    parts = {"pooled": pooled, "patch": pooled.reshape(-1, 4, 4)}
    record = feature_fidelity(parts, parts, labels)
    assert record["pooled_cosine"] == pytest.approx(1.0) and record["patch_cosine_worst_1pct"] == pytest.approx(1.0)
    assert record["recall_at_1"] == record["recall_at_10"] == 1.0
    assert record["knn_top1"] == record["knn_top1_reference"] == 1.0  # well separated clusters


def test_degraded_features_score_lower() -> None:
    pooled, labels = _clusters()
    noisy = pooled + 3 * torch.randn(pooled.shape, generator=torch.Generator().manual_seed(1))
    record = feature_fidelity({"pooled": pooled}, {"pooled": noisy}, labels)
    assert record["pooled_cosine_worst_1pct"] < record["pooled_cosine"] < 0.99
    assert record["recall_at_1"] < 1.0 and "patch_cosine" not in record
    shuffled = {"pooled": pooled[torch.randperm(len(pooled), generator=torch.Generator().manual_seed(2))]}
    assert feature_fidelity({"pooled": pooled}, shuffled, labels)["knn_top1"] < 0.7


def test_recall_and_knn_on_a_known_gallery() -> None:
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1).double()
    swapped = emb[[0, 2, 1, 3]]  # items 1 and 2 exchange places: every nearest neighbour changes
    assert neighbour_recall(emb, emb, 1) == 1.0 and neighbour_recall(emb, swapped, 1) == 0.0
    assert neighbour_recall(emb, emb, 10) is None  # fewer images than k + 1
    labels = torch.tensor([0, 0, 1, 1])
    assert knn_top1(emb, labels, k=1) == 1.0
    gallery, gallery_labels = emb[[0, 2]], torch.tensor([1, 0])  # a gallery with the labels the other way round
    assert knn_top1(emb, labels, gallery, gallery_labels, k=1) == 0.0
    assert knn_top1(emb, torch.tensor([-1, -1, -1, -1]), k=1) is None


def test_report_shows_feature_fidelity_and_headless_summaries() -> None:
    from tests.test_report import sample_report
    from vitslim.report import render_markdown
    from vitslim.report.features import feature_figure

    report = sample_report()
    fp32 = report["variants"][0]
    fp32.update(top1=None, top5=None, agreement=None, cosine=1.0)
    assert "| fp32 | cosine 1.0000 |" in render_markdown(report)  # a headless run's summary, not "agreement n/a"
    quant = {**fp32, "name": "quant", "cosine": 0.97}
    features = {"pooled_cosine": 0.98, "pooled_cosine_worst_1pct": 0.9, "patch_cosine": 0.95, "recall_at_10": 0.8}
    quant.update(outputs={"pooled": [384], "patch": [256, 384]}, features={**features, "recall_at_1": 0.5})
    report["variants"].append(quant)
    text = render_markdown(report)
    assert "| quant | pooled cosine 0.9800, recall@10 80.00% |" in text
    assert "Feature fidelity vs fp32 (outputs per image: pooled 384, patch 256x384)" in text
    assert "| quant | 0.9800 | 0.9000 | 0.9500 | 50.00% | 80.00% |" in text  # columns of measured figures only
    assert feature_figure(report)[:4] == b"\x89PNG"
