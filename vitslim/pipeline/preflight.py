"""Checks that take seconds, run before a compress run spends minutes calibrating.

One image of the evaluation data (and one of the calibration data, when a stage needs it) goes
through the model: a size the model does not take, unreadable calibration data or weights that
give NaN fail here. The recipe's layer patterns are resolved against the model's layers and
quantizer sites, so a sparsity pattern that selects a layer unable to hold 2:4 fails before the
stages before it have run (each stage family's ``calibrates`` and ``check``, :mod:`vitslim.stages`).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import torch

from vitslim import stages as stage_table
from vitslim.errors import UserError
from vitslim.models import LoadedModel

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vitslim.pipeline.context import StageContext
    from vitslim.recipes import Recipe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_one_image(loaded: LoadedModel, images: torch.Tensor, what: str) -> None:
    """Run the first of ``images`` through the model: it must take its size and give finite outputs."""
    image = images[:1].to(next(loaded.model.parameters()).device)
    try:
        with torch.no_grad():
            output = loaded.model(image)
    except (RuntimeError, AssertionError, ValueError) as exc:  # timm asserts the input size
        shape = tuple(image.shape[1:])
        raise UserError(f"{loaded.name} fails on a {shape} image of {what}: {_first_line(exc)}") from None
    if not torch.isfinite(output).all():
        raise UserError(f"{loaded.name} gives NaN or infinite outputs on an image of {what}")


def preflight(
    loaded: LoadedModel, recipe: Recipe, eval_images: torch.Tensor, data_name: str, ctx: StageContext
) -> None:
    """Seconds-long checks of ``recipe`` on ``loaded`` before any stage runs (see the module docstring);
    ``ctx`` gives the calibration data. Pattern warnings are left to the stages themselves."""
    check_one_image(loaded, eval_images, data_name)
    families = [(stage_table.STAGES[name].load(), config) for name, config in recipe.stages.items()]
    if any(family.calibrates is not None and family.calibrates(config) for family, config in families):
        check_one_image(loaded, ctx.calibration(1)[0], "the calibration data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family, config in families:
            if family.check is not None:
                family.check(loaded.model, config)
    for family, config in families:
        caution = None if family.caution is None else family.caution(config, ctx)
        if caution:
            log.warning("%s", caution)
