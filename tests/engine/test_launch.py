"""Settings precedence and the way a training run starts (`dfine train` without the CLI)."""

from __future__ import annotations

import pytest

from dfine_cli.engine.launch import build_config
from dfine_cli.errors import UsageError


def test_flags_win_over_set_which_wins_over_the_config_file(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 3\nbatch_size: 8\nseed: 5\n")
    cfg = build_config({"epochs": 7, "data": "shapes"}, config, ["batch_size=2"])
    assert (cfg.epochs, cfg.batch_size, cfg.seed) == (7, 2, 5)
    assert cfg.device == "auto" and cfg.img_size == 640  # the recipe defaults below them all


def test_the_class_map_text_is_parsed_once():
    cfg = build_config({"class_map": "car=Car,person=Person", "data": "shapes"})
    assert cfg.class_map == {"car": "Car", "person": "Person"}


def test_a_bad_flag_is_a_usage_error():
    with pytest.raises(UsageError, match="img_size"):
        build_config({"img_size": 100, "data": "shapes"})
