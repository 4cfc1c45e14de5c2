"""What stages get besides their config: calibration images, the seed, progress, and whether the
deployment CPU's int8 kernels saturate."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vitslim.calib import build_transform, load_dataset, make_loader
from vitslim.errors import UserError
from vitslim.evaluate.environment import int8_saturates
from vitslim.models import LoadedModel

__all__ = ["StageContext"]


@dataclass
class StageContext:
    """What stages need besides their config (a :class:`~vitslim.stages.Calibration`): calibration
    images (loaded on first use, from ``calib`` or the model's default calibration data), the seed,
    whether to show progress and whether the deployment CPU's int8 kernels saturate (default: this
    machine's)."""

    loaded: LoadedModel
    calib: str | None = None
    seed: int = 0
    progress: bool = True
    batch_size: int = 32
    int8_saturates: bool = field(default_factory=int8_saturates)
    _cache: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def calibration(self, images: int) -> list[torch.Tensor]:
        """``images`` seeded, preprocessed calibration images as batches."""
        if images not in self._cache:
            spec = self.calib or self.loaded.default_calib
            if spec is None:
                raise UserError(f"--calib is required to calibrate model {self.loaded.name} (an image folder)")
            dataset = load_dataset(spec, transform=build_transform(self.loaded.data_config))
            loader = make_loader(dataset, batch_size=self.batch_size, limit=images, seed=self.seed)
            self._cache[images] = [batch for batch, _ in loader]
        return self._cache[images]
