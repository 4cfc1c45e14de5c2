"""Shared fixtures: the tiny ViT families and a small labelled image folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_VITS, write_class_folder


@pytest.fixture(params=sorted(TINY_VITS))
def tiny_family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_class_folder(tmp_path / "images")
