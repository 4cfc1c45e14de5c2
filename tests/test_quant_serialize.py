"""Saving a quantized model (safetensors + JSON) and loading it onto a fresh model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.helpers import images, meaningful_vit, run, uniform_cfg
from vitslim.compress.quant import (
    QuantConfig,
    is_quantized,
    load_quantized,
    quant_points,
    quantization_info,
    quantize_,
    reparam_record,
    save_quantized,
)
from vitslim.compress.quant.serialize import CONFIG_NAME, WEIGHTS_NAME
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.errors import UserError

CASES = {
    # LN reparam adds qkv biases, attention outputs and GELU shift folded, AdaLog on post-softmax and post-GELU
    "vit-nobias-adalog": (
        "vit",
        {"qkv_bias": False},
        lambda: QuantConfig.log(4, 4, attn_reparam="mad", qk_rotation=True),
    ),
    "deit-distilled-w8a8": (
        "deit",
        {"model_name": "deit_tiny_distilled_patch16_224"},
        lambda: uniform_cfg(8, 8, overrides={"head.*": None}),
    ),
    "dinov2-tanq": ("dinov2_reg", {}, lambda: QuantConfig.preset("w4a4-tanq")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_identical(case, tmp_path):
    family, overrides, make_cfg = CASES[case]
    model = quantize_(meaningful_vit(family, **overrides), make_cfg(), images(8), progress=False)
    x = images(4, seed=5)
    expected = run(model, x)
    save_quantized(model, tmp_path / "q")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])

    fresh = meaningful_vit(family, seed=7, **overrides)  # other weights: everything comes from the files
    load_quantized(fresh, tmp_path / "q")
    assert torch.equal(run(fresh, x), expected)
    assert sorted(quant_points(fresh)) == sorted(quant_points(model))
    assert all(p.enabled and p.quantizer.calibrated for p in quant_points(fresh).values())
    assert reparam_record(fresh) == reparam_record(model)
    assert quantization_info(fresh)["config"] == make_cfg().to_dict()


def test_json_describes_every_site(tmp_path):
    model = quantize_(meaningful_vit("vit"), QuantConfig.log(4, 6), images(4), progress=False)
    meta = json.loads((save_quantized(model, tmp_path) / CONFIG_NAME).read_text())
    sites = {s["site"]: s for s in meta["sites"]}
    assert sites["blocks.0.attn.softmax"]["kind"] == "post_softmax"
    assert sites["blocks.0.attn.softmax"]["quantizer"]["name"] == "adalog"
    assert sites["blocks.0.attn.softmax"]["quantizer"]["bits"] == 6
    assert sites["blocks.1.mlp.fc2.weight"]["quantizer"]["options"]["symmetric"] is True
    assert meta["reparam"]["layernorm"]["target"] == "mean" and meta["reparam"]["gelu_shift"]["shift"] > 0
    assert meta["model_class"] == "timm.models.vision_transformer.VisionTransformer"


def test_load_onto_a_token_reduced_model(tmp_path):
    base = meaningful_vit("vit", depth=3)
    model = quantize_(copy.deepcopy(base), uniform_cfg(8, 6), images(8), progress=False)
    save_quantized(model, tmp_path)
    x = images(4, seed=5)
    expected = run(apply_token_reduction(model, TokenMergeConfig(r=3)), x)
    fresh = apply_token_reduction(meaningful_vit("vit", depth=3, seed=3), TokenMergeConfig(r=3))
    assert torch.equal(run(load_quantized(fresh, tmp_path), x), expected)


def test_bad_saves_and_loads_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not quantized"):
        save_quantized(meaningful_vit("vit"), tmp_path / "none")
    with pytest.raises(UserError, match="no saved quantized model"):
        load_quantized(meaningful_vit("vit"), tmp_path / "missing")

    deep = quantize_(meaningful_vit("vit", depth=3), uniform_cfg(8, 8), images(2), progress=False)
    save_quantized(deep, tmp_path / "deep")
    with pytest.raises(UserError, match="do not exist on this model"):
        load_quantized(meaningful_vit("vit"), tmp_path / "deep")
    shallow = quantize_(meaningful_vit("vit"), uniform_cfg(8, 8), images(2), progress=False)
    save_quantized(shallow, tmp_path / "shallow")
    target = meaningful_vit("vit", depth=3)
    with pytest.raises(UserError, match="does not fit"):
        load_quantized(target, tmp_path / "shallow")
    assert not is_quantized(target) and not reparam_record(target)  # left untouched
    with pytest.raises(UserError, match="already quantized"):
        load_quantized(shallow, tmp_path / "shallow")

    meta = json.loads((tmp_path / "shallow" / CONFIG_NAME).read_text())
    meta["format"] = "something-else"
    (tmp_path / "shallow" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="unsupported format"):
        load_quantized(meaningful_vit("vit"), tmp_path / "shallow")
    assert not is_quantized(meaningful_vit("vit"))
