"""Empirical bias correction: every corrected layer's mean output on the calibration data equals
the float model's (checked with whole-model passes, also under token merging), the float
reference is taken before GPTQ changes the weights, and the recipe stage validates the flag."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import images, meaningful_vit, uniform_cfg
from vitslim.compress.quant import QuantConfig, SiteSpec, quantization_info, quantize_
from vitslim.compress.quant.bias_correction import bias_correct_, correctable_layers, output_means
from vitslim.compress.quant.stage import QuantStage
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.errors import UserError


def layer_means(model: torch.nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    layers = {n: model.get_submodule(n) for n in names}
    with torch.no_grad(), output_means(layers) as means:
        for x in batches:
            model(x)
    return means


def worst_gap(model, reference: dict[str, torch.Tensor], batches) -> float:
    """Largest |mean output - float mean| over layers and channels, relative to the float means' scale."""
    means = layer_means(model, list(reference), batches)
    return max(float((means[n] - reference[n]).abs().max() / (reference[n].abs().max() + 1e-3)) for n in reference)


def log_cfg(bits: int) -> QuantConfig:
    """Log quantizers (biased rounding) on the softmax and GELU outputs, uniform elsewhere."""
    return uniform_cfg(bits, bits, post_softmax=SiteSpec("adalog", bits), post_gelu=SiteSpec("adalog", bits))


@pytest.mark.parametrize("tokens", [False, True])
def test_corrected_layers_have_the_float_mean(tokens: bool) -> None:
    model = meaningful_vit("vit")
    if tokens:
        apply_token_reduction(model, TokenMergeConfig(r=2, proportional_attention=True))
    batches = [images(4, seed=1), images(4, seed=2)]
    float_model = copy.deepcopy(model)
    quantize_(model, log_cfg(4), batches, search="minmax", progress=False)
    names = list(correctable_layers(model))
    assert len(names) == 2 * 4 + 2  # qkv, proj, fc1, fc2 per block; patch embedding; head
    reference = layer_means(float_model, names, batches)
    before = worst_gap(model, reference, batches)
    changes = bias_correct_(model, batches, reference, progress=False)
    assert set(changes) == set(names)
    assert before > 1e-2  # there was something to correct
    assert worst_gap(model, reference, batches) < 1e-4


def test_quantize_corrects_towards_the_float_model_before_gptq() -> None:
    model = meaningful_vit("deit")
    batches = [images(8, seed=3)]
    float_model = copy.deepcopy(model)
    quantize_(model, log_cfg(3), batches, search="minmax", gptq=True, bias_correction=True, progress=False)
    names = list(correctable_layers(model))
    assert set(quantization_info(model)["bias_correction"]) == set(names)
    assert worst_gap(model, layer_means(float_model, names, batches), batches) < 1e-4


def test_stage_flag() -> None:
    stage = QuantStage.from_dict({"preset": "w6a6-log", "bias_correction": True})
    assert stage.quantize_options()["bias_correction"] is True
    assert "bias-corrected" in stage.describe()
    with pytest.raises(UserError, match="bias_correction must be true or false"):
        QuantStage.from_dict({"bias_correction": "yes"})
