"""The tiny Objects365 layout every remap/resize test starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.obj365.official import build_obj365


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return build_obj365(tmp_path / "Objects365" / "data")
