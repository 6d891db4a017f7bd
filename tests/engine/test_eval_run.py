"""``evaluate_weights``: the dataset is checked before the model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfine_cli.engine.eval_run import evaluate_weights
from dfine_cli.errors import DataError


def test_a_bad_dataset_is_reported_before_the_weights_are_opened(tmp_path: Path) -> None:
    # Neither exists; the dataset is the one named, so a user fixes --data first and never
    # waits for a large model to load only to learn the dataset path was wrong.
    with pytest.raises(DataError, match="no-such-data"):
        evaluate_weights(tmp_path / "no-such-weights.pth", tmp_path / "no-such-data")
