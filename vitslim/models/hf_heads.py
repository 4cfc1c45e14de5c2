"""A timm ViT whose classifier reads the class token next to the mean of the patch tokens.

Hugging Face ``Dinov2ForImageClassification`` (and its register variant) classify
``[class token, mean of patch tokens]`` after the final LayerNorm; timm has no such pooling, so
this subclass changes only ``forward_head``. Both halves go through ``self.pool``, so the token
reduction patch (size-weighted mean after merging) applies to it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class ClassAndMeanPoolViT(VisionTransformer):
    """``VisionTransformer`` (``global_pool='token'``) with a head on ``cat(class token, patch mean)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_features = self.head_hidden_size = 2 * self.embed_dim
        self.reset_classifier(self.num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError("the class-token + patch-mean head keeps global_pool='token'")
        self.num_classes = num_classes
        self.head = nn.Linear(2 * self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.cat([self.pool(x, "token"), self.pool(x, "avg")], dim=-1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)
