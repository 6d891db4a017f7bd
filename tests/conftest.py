"""Shared fixtures: location of ../shared, tiny models, generated images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _offline_weights(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test downloads: weights names and hf: ids point at a closed loopback port, in a
    private cache. Tests of downloads start their own server and override these."""
    dead = "http://127.0.0.1:9/"
    monkeypatch.setenv("DFINE_WEIGHTS_URL", dead + "dfine-tests-offline/")
    monkeypatch.setenv("HF_ENDPOINT", dead.rstrip("/"))
    monkeypatch.setenv("DFINE_HOME", str(tmp_path_factory.getbasetemp() / "dfine_home"))


def require_reference() -> Path:
    if not (REFERENCE / "README.md").is_file():
        pytest.skip("../shared/reference is not available")
    return REFERENCE


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_reference()


@pytest.fixture
def rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)


def write_jpeg(path: Path, h: int = 96, w: int = 128, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 10), (w // 2, h // 2), (255, 0, 0), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
