"""What loading a model gives: the model and what is needed to feed and describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what is needed to feed and describe it."""

    model: torch.nn.Module
    name: str
    source: str
    data_config: dict[str, Any]
    num_classes: int
    class_names: list[str] | None = None
    default_calib: str | None = None
    default_data: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]
