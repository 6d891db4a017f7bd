"""Every official size: layout, strict loading of official-format weights, size detection."""

from __future__ import annotations

import pytest
import torch

from dfine_cli.checkpoints import infer_config, is_derived_key, load_weights, read_checkpoint
from dfine_cli.errors import CheckpointError
from dfine_cli.models.build import build_model, build_model_from_config
from dfine_cli.models.presets import SIZES
from tests.conftest import require_reference
from tests.models.reference_weights import keyed_state_dict, read_manifest


@pytest.mark.parametrize("size", SIZES)
def test_state_dict_layout_matches_manifest(size):
    ref = require_reference()
    rows = {r["key"]: r for r in read_manifest(ref / f"official_keys_{size}.tsv")}
    model = build_model(size)
    own = model.state_dict()
    params = dict(model.named_parameters())
    for key, row in rows.items():
        if is_derived_key(key):
            assert key not in own
            continue
        assert key in own, key
        shape = "scalar" if own[key].dim() == 0 else "x".join(map(str, own[key].shape))
        assert shape == row["shape"], key
        trainable = key in params and params[key].requires_grad
        assert trainable == (row["kind"] == "param"), key
    assert set(own) <= set(rows)


@pytest.mark.parametrize("size", SIZES)
def test_official_checkpoint_of_every_size_loads_and_is_detected(size, tmp_path):
    ref = require_reference()
    state = keyed_state_dict(ref, size)
    path = tmp_path / f"dfine_{size}.pth"
    torch.save({"model": state}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.info.config.name == size
    assert ckpt.info.num_classes == 80
    assert ckpt.info.source_format == "official"
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict)
    got = model.state_dict()
    for key in ("decoder.enc_score_head.weight", "encoder.input_proj.0.conv.weight"):
        torch.testing.assert_close(got[key], state[key])
    expected_reg_scale = 8.0 if size == "x" else 4.0
    assert float(got["decoder.reg_scale"]) == expected_reg_scale


def test_ema_weights_are_preferred(tmp_path):
    ref = require_reference()
    state = keyed_state_dict(ref, "n")
    ema = {k: v.clone() for k, v in state.items()}
    ema["decoder.enc_score_head.bias"] = torch.full_like(ema["decoder.enc_score_head.bias"], 7.0)
    path = tmp_path / "ema.pth"
    torch.save({"model": state, "ema": {"module": ema, "updates": 10}, "last_epoch": 3}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.info.source_format == "official-ema"
    assert float(ckpt.state_dict["decoder.enc_score_head.bias"][0]) == 7.0


def test_num_classes_detected_from_shapes():
    model = build_model("n", num_classes=3)
    cfg = infer_config(model.state_dict())
    assert cfg.name == "n" and cfg.num_classes == 3


def test_shape_mismatch_is_named(tmp_path):
    state = build_model("n", num_classes=3).state_dict()
    state["decoder.dec_score_head.0.weight"] = torch.zeros(5, 128)
    model = build_model("n", num_classes=3)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*dec_score_head\.0\.weight"):
        load_weights(model, state)


def test_missing_and_unexpected_keys_are_named():
    state = build_model("n", num_classes=3).state_dict()
    state.pop("decoder.enc_output.proj.weight")
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing key.*enc_output\.proj\.weight.*unexpected.*extra"):
        load_weights(build_model("n", num_classes=3), state)
