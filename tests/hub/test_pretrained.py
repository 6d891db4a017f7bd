"""ImageNet backbones: the official layout loads strictly; training starts from them by default."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from dfine_cli.checkpoints import read_checkpoint
from dfine_cli.errors import CheckpointError, DependencyError
from dfine_cli.hub.pretrained import (
    backbone_entry,
    build_backbone_for,
    load_backbone_weights,
    load_pretrained_backbone,
)
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.presets import preset
from tests.hub.weights_server import backbone_file, serve
from tests.models.reference_weights import DTYPES, _shape, read_manifest

PREFIX = "backbone."


_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _official_backbone(reference, size: str) -> dict[str, torch.Tensor]:
    """The ``backbone.`` entries of the official layout of ``size`` (key, shape, dtype from
    ``official_keys_{size}.tsv``), prefix removed, filled with seeded random values."""
    if size not in _CACHE:
        g = torch.Generator().manual_seed(0)
        state = {}
        for row in read_manifest(reference / f"official_keys_{size}.tsv"):
            if not row["key"].startswith(PREFIX):
                continue
            dtype, shape = DTYPES[row["dtype"]], _shape(row["shape"])
            value = torch.randn(shape, generator=g) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
            state[row["key"][len(PREFIX):]] = value.to(dtype)
        _CACHE[size] = state
    return dict(_CACHE[size])


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_official_backbone_layout_loads_strictly(reference_dir, size):
    state = _official_backbone(reference_dir, size)
    model = build_model_from_config(preset(size))
    load_backbone_weights(model.backbone, state, source=f"official {size}")
    for key, value in model.backbone.state_dict().items():
        if key in state:
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_official_backbone_layout_loads_into_the_table_architecture(reference_dir):
    """The verification model of each table backbone accepts the official keys (L/X: BN counters absent)."""
    for size in ("s", "m", "l", "x"):
        load_backbone_weights(build_backbone_for(backbone_entry(size)), _official_backbone(reference_dir, size))


def test_counters_may_differ_but_nothing_else(reference_dir):
    state = _official_backbone(reference_dir, "l")
    deim_l = build_model_from_config(preset("l", variant="deim"))  # ordinary BatchNorm
    load_backbone_weights(deim_l.backbone, state)  # counters missing from the file: kept
    with_counters = dict(deim_l.backbone.state_dict())
    load_backbone_weights(build_model_from_config(preset("l")).backbone, with_counters)  # dropped
    broken = dict(state)
    broken.pop("stem.stem1.conv.weight")
    broken["head.fc.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"1 missing key.*stem1.conv.weight.*1 unexpected key"):
        load_backbone_weights(deim_l.backbone, broken)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone_weights(build_model_from_config(preset("m")).backbone, state)


def test_size_to_backbone_table():
    assert {s: backbone_entry(s).backbone for s in "nsmlx"} == {
        "n": "B0", "s": "B0", "m": "B2", "l": "B4", "x": "B5"}
    assert [backbone_entry(s).file for s in "nmlx"] == [
        f"PPHGNetV2_{b}_stage1.pth" for b in ("B0", "B2", "B4", "B5")]


def test_load_pretrained_backbone_downloads_and_loads(monkeypatch, tmp_path):
    with serve() as srv:
        monkeypatch.setenv("DFINE_WEIGHTS_URL", srv.base)
        monkeypatch.setenv("DFINE_HOME", str(tmp_path))
        srv.put("PPHGNetV2_B0_stage1.pth", backbone_file(seed=7))
        model = build_model_from_config(preset("n", num_classes=3))
        line = load_pretrained_backbone(model, preset("n"))
    path = backbone_entry("n").cache_path()
    assert line == f"backbone: ImageNet HGNetv2-B0 from {path}"
    expected = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.backbone.stem.stem1.conv.weight, expected["stem.stem1.conv.weight"])


# -- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from dfine_cli.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth-pretrained")
    make_synthetic_dataset(root, num_images=8, num_classes=2, seed=4, img_size=320)
    return root


def _cfg(data, out, **kw):
    from dfine_cli.engine.config import TrainConfig

    base = dict(data=str(data), model="n", epochs=1, batch_size=4, img_size=320, workers=0,
                device="cpu", output=str(out), seed=0, num_denoising=10)
    return TrainConfig(**(base | kw))


def test_training_starts_from_the_imagenet_backbone_and_says_so(monkeypatch, tmp_path, tiny_data, caplog):
    from dfine_cli.engine.trainer import train

    with serve() as srv:
        monkeypatch.setenv("DFINE_WEIGHTS_URL", srv.base)
        monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
        srv.put("PPHGNetV2_B0_stage1.pth", backbone_file(seed=3))
        with caplog.at_level(logging.INFO, logger="dfine"):
            result = train(_cfg(tiny_data, tmp_path / "run"))
        assert srv.count("PPHGNetV2_B0_stage1.pth") == 1
    path = backbone_entry("n").cache_path()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dfine.train")]
    expected = f"backbone: ImageNet HGNetv2-B0 from {path}; encoder and decoder: random initialisation"
    start = next(i for i, m in enumerate(messages) if m.startswith("training D-FINE-N"))
    assert messages[start - 1] == expected  # the run's header: weights first, then the run
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["pretrained"] is True and config["resolved"]["weights"] == expected
    assert read_checkpoint(result.last_checkpoint).training["weights"] == expected


def test_training_offline_fails_before_anything_with_the_way_out(tmp_path, tiny_data):
    from dfine_cli.engine.trainer import train

    with pytest.raises(DependencyError) as info:  # conftest: a closed loopback port
        train(_cfg(tiny_data, tmp_path / "run"))
    message = str(info.value)
    assert "PPHGNetV2_B0_stage1.pth" in message and str(backbone_entry("n").cache_path()) in message
    assert "--no-pretrained" in message
    assert not (tmp_path / "run" / "last.pth").exists()


def test_no_pretrained_and_resume_do_not_download(tmp_path, tiny_data, caplog):
    from dfine_cli.engine.trainer import Trainer, train

    with caplog.at_level(logging.INFO, logger="dfine"):
        first = train(_cfg(tiny_data, tmp_path / "run", pretrained=False))
    assert "random initialisation (no pretrained backbone)" in caplog.text
    caplog.clear()
    saved = read_checkpoint(first.last_checkpoint).training
    assert saved["config"]["pretrained"] is False
    # a run recorded with pretrained=True resumes without any download (the URL is dead here)
    saved["config"]["pretrained"] = True
    torch.save({**torch.load(first.last_checkpoint, weights_only=True), "training": saved},
               first.last_checkpoint)
    with caplog.at_level(logging.INFO, logger="dfine"):
        Trainer(_cfg(tiny_data, tmp_path / "x", epochs=1, resume=str(first.run_dir))).fit()
    assert f"all weights from {first.last_checkpoint} (resumed)" in caplog.text
