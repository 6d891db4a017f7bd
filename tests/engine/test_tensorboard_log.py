"""``--tensorboard``: scalars per step and per epoch; exit 6 naming the extra when missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfine_cli.cli.main import app
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.engine.config import TrainConfig, validate
from dfine_cli.engine.train_status import StatusIterable
from dfine_cli.engine.trainer import train
from dfine_cli.errors import DependencyError


def test_one_epoch_logs_step_and_epoch_scalars_and_shows_loss_beside_the_bar(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_synthetic_dataset(tmp_path / "data", num_images=8, num_classes=2, seed=0, img_size=320)
    statuses: list[str] = []

    def progress(items, description, total=None):
        for item in items:
            yield item
            if isinstance(items, StatusIterable):
                statuses.append(items.status())

    cfg = TrainConfig(data=str(tmp_path / "data"), model="n", epochs=1, batch_size=3, img_size=320,
                      workers=0, device="cpu", output=str(tmp_path / "run"), pretrained=False,
                      num_denoising=10, tensorboard=True, check_images="header")
    result = train(cfg, progress=progress)
    steps = result.history[0]
    assert len(statuses) == 2 and all(s.startswith("loss ") and " lr " in s for s in statuses)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/loss_vfl", "epoch/loss", "epoch/val_AP", "epoch/lr"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("epoch/val_AP")] == [1]
    assert events.Scalars("epoch/loss")[0].value == pytest.approx(steps["loss"], rel=1e-5)
    mean_of_steps = sum(e.value for e in events.Scalars("train/loss")) / 2
    assert statuses[-1].startswith(f"loss {mean_of_steps:.4f}")


def test_missing_tensorboard_is_exit_6_naming_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(DependencyError, match=r"pip install 'dfine\[tensorboard\]'"):
        validate(TrainConfig(data="x", tensorboard=True))
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--tensorboard",
                                      "--output", str(tmp_path / "run")])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 6, result.output
    assert len(errors) == 1 and "--tensorboard needs the 'tensorboard' package" in errors[0]
    assert "pip install 'dfine[tensorboard]'" in errors[0]
    assert not (tmp_path / "run").exists()  # failed before the run folder was made
