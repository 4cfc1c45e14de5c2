"""Fidelity of feature outputs (pooled embeddings, patch-token maps) against a reference model.

* cosine with the reference per image (pooled) and per patch token (patch): the mean, and the
  worst 1% (the 1st percentile);
* neighbour agreement: among a gallery of the evaluation images (each image's query leaves
  itself out), the fraction of the reference's ``k`` nearest neighbours (cosine) that the
  compressed embeddings also rank in their ``k`` nearest, for k = 1 and 10;
* kNN top-1, when labels exist: each image classified by the cosine-weighted vote of its
  :data:`KNN_K` nearest gallery images (leave-one-out), as DINO's k-NN evaluation does.

The retrieval embedding is the pooled output, else the mean of the patch map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KNN_K", "feature_fidelity", "knn_top1", "neighbour_recall", "retrieval_embedding"]

KNN_K = 10
RECALL_AT = (1, 10)


def _cosines(reference: torch.Tensor, outputs: torch.Tensor) -> dict[str, float]:
    """Mean and 1st percentile of the row-wise cosines of two [M, C] tensors."""
    cos = F.cosine_similarity(reference.double(), outputs.double(), dim=-1)
    return {"mean": float(cos.mean()), "worst_1pct": float(torch.quantile(cos, 0.01))}


def retrieval_embedding(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The L2-normalised embedding images are retrieved by: pooled, else the mean patch token."""
    emb = parts["pooled"] if "pooled" in parts else parts["patch"].mean(dim=1)
    return F.normalize(emb.flatten(1).double(), dim=-1)


def _neighbours(queries: torch.Tensor, gallery: torch.Tensor, k: int, leave_one_out: bool) -> torch.Tensor:
    sims = queries @ gallery.T
    if leave_one_out:
        sims.fill_diagonal_(-torch.inf)
    return sims.topk(k, dim=1)


def neighbour_recall(reference: torch.Tensor, outputs: torch.Tensor, k: int) -> float | None:
    """Fraction of the reference's ``k`` nearest neighbours (leave-one-out, normalised embeddings
    [N, D]) found among the outputs' ``k`` nearest; None with too few images."""
    if reference.shape[0] <= k:
        return None
    ref = _neighbours(reference, reference, k, True).indices
    out = _neighbours(outputs, outputs, k, True).indices
    hits = (ref.unsqueeze(-1) == out.unsqueeze(1)).any(dim=-1).double()
    return float(hits.mean())


def knn_top1(
    queries: torch.Tensor,
    labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    k: int = KNN_K,
) -> float | None:
    """Top-1 of the cosine-weighted k-NN vote (normalised embeddings); the gallery defaults to the
    queries themselves, each leaving itself out. None when unlabelled or too few images."""
    leave_one_out = gallery is None
    gallery = queries if gallery is None else gallery
    gallery_labels = labels if gallery_labels is None else gallery_labels
    if (labels < 0).any() or (gallery_labels < 0).any() or gallery.shape[0] <= k:
        return None
    top = _neighbours(queries, gallery, k, leave_one_out)
    votes = torch.zeros(queries.shape[0], int(gallery_labels.max()) + 1, dtype=torch.float64)
    votes.scatter_add_(1, gallery_labels[top.indices], top.values.double())
    return float((votes.argmax(dim=1) == labels).double().mean())


def feature_fidelity(
    reference: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, float | None]:
    """The feature fidelity record of ``outputs`` against ``reference`` (both by output name)."""
    record: dict[str, float | None] = {}
    if "pooled" in outputs:
        pooled = _cosines(reference["pooled"].flatten(1), outputs["pooled"].flatten(1))
        record.update(pooled_cosine=pooled["mean"], pooled_cosine_worst_1pct=pooled["worst_1pct"])
    if "patch" in outputs:
        dim = outputs["patch"].shape[-1]
        patch = _cosines(reference["patch"].reshape(-1, dim), outputs["patch"].reshape(-1, dim))
        record.update(patch_cosine=patch["mean"], patch_cosine_worst_1pct=patch["worst_1pct"])
    ref, out = retrieval_embedding(reference), retrieval_embedding(outputs)
    for k in RECALL_AT:
        record[f"recall_at_{k}"] = neighbour_recall(ref, out, k)
    record["knn_top1"] = knn_top1(out, labels)
    record["knn_top1_reference"] = knn_top1(ref, labels)
    return record
