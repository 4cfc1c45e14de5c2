"""Shared fixtures: the tiny ViT families and a small labelled image folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_VITS, write_class_folder


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """One intra-op thread: tiny models run far faster so on a loaded 2-core machine, and results
    do not depend on it. Commands that time or evaluate real models set their own thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=sorted(TINY_VITS))
def tiny_family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_class_folder(tmp_path / "images")
