"""Loading timm models and checkpoints, and the errors a user can run into."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from vitslim.errors import UserError
from vitslim.models import load_model
from vitslim.models.checkpoints import read_checkpoint
from vitslim.models.timm_weights import load_fitting_state

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny(num_classes: int = 10, **extra):
    return load_model("vit_tiny_patch16_224", num_classes=num_classes, pretrained=False, model_args={**TINY, **extra})


def test_timm_name_with_model_args_and_data_config() -> None:
    loaded = tiny()
    assert loaded.input_size == (3, 32, 32)  # timm's own config would say 224
    assert loaded.num_classes == 10 and loaded.source == "random initialisation (seed 0)"
    again = tiny()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.model(x), again.model(x))  # random init is reproducible
    assert not loaded.model.training
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_name_suggests_close_timm_names() -> None:
    with pytest.raises(UserError, match="did you mean .*vit_tiny_patch16_224"):
        load_model("vit_tiny_patch16_22", pretrained=False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip_infers_num_classes(tmp_path: Path, suffix: str) -> None:
    source = tiny(num_classes=7)
    path = tmp_path / f"ckpt{suffix}"
    state = source.model.state_dict()
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    loaded = load_model("vit_tiny_patch16_224", checkpoint=path, model_args=TINY)
    assert loaded.num_classes == 7 and loaded.source == f"checkpoint {path}"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), source.model(x))


def test_headless_checkpoint_gives_backbone(tmp_path: Path) -> None:
    source = tiny(num_classes=0)
    path = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(source.model.state_dict(), path)
    loaded = load_model("vit_tiny_patch16_224", checkpoint=path, model_args=TINY)
    assert loaded.num_classes == 0
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 64)


def test_missing_and_corrupt_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(corrupt)
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(UserError, match="state dict of tensors"):
        read_checkpoint(not_tensors)


class Payload:
    """An arbitrary object: unpickling it must be refused (weights_only=True)."""


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(path)


def test_checkpoint_that_does_not_fit_names_keys(tmp_path: Path) -> None:
    deeper = tiny(depth=3)
    path = tmp_path / "deeper.safetensors"
    safetensors.torch.save_file(deeper.model.state_dict(), path)
    with pytest.raises(UserError, match=r"unexpected keys \(\d+\): blocks\.2\."):
        load_model("vit_tiny_patch16_224", checkpoint=path, model_args=TINY)
    model = tiny().model
    state = dict(model.state_dict())
    state["head.weight"] = torch.zeros(3, 64)
    del state["norm.bias"]
    with pytest.raises(
        UserError, match=r"missing keys \(1\): norm\.bias; shape mismatches \(1\): head\.weight \(3, 64\) vs \(10, 64\)"
    ):
        load_fitting_state(model, state, "ckpt")


def test_demo_rejects_timm_options() -> None:
    with pytest.raises(UserError, match="cannot be used with the demo model"):
        load_model("demo", num_classes=3)
