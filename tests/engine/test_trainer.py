"""Training runs end to end on tiny data: checkpoints, resume, custom ids, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dfine_cli.checkpoint import read_checkpoint
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.detector import Detector
from dfine_cli.engine.config import TrainConfig, merge, parse_set
from dfine_cli.engine.trainer import Trainer, train
from dfine_cli.errors import DataError, TrainingError, UsageError


def _remap_ids(root: Path, ids: dict[int, int]) -> None:
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        for c in data["categories"]:
            c["id"] = ids[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = ids[a["category_id"]]
        path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, num_images=10, num_classes=3, seed=1, img_size=320)
    _remap_ids(root, {1: 3, 2: 7, 3: 42})
    return root


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), model="n", epochs=2, batch_size=4, img_size=320, workers=0,
                device="cpu", output=str(out), seed=3, num_denoising=20)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).training["model"]


def test_train_writes_run_files_and_custom_ids_flow_through(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("last.pth", "best.pth", "config.yaml", "metrics.csv", "metrics.json", "metrics.svg"):
        assert (run / name).is_file(), name
    assert result.epochs_run == 2 and len(result.history) == 2
    assert "val_AP" in result.history[-1] and "loss_vfl" in result.history[0]
    ckpt = read_checkpoint(run / "best.pth")
    assert ckpt.info.category_ids == [3, 7, 42]
    assert ckpt.info.class_names == ["square", "circle", "triangle"]
    det = Detector.from_checkpoint(run / "best.pth")
    out = det.predict(str(next((tiny_data / "images" / "val").iterdir())), conf=0.0, max_det=5)[0]
    assert set(out.category_ids) <= {3, 7, 42}
    assert set(out.names) <= {"square", "circle", "triangle"}


def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path):
    full = train(tiny_config(tiny_data, tmp_path / "full"))
    train(tiny_config(tiny_data, tmp_path / "part", epochs=1))
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "ignored", epochs=2,
                                  resume=str(tmp_path / "part"))).fit()
    assert resumed.run_dir == tmp_path / "part"
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_mid_epoch_from_step_checkpoint(tiny_data, tmp_path):
    full = train(tiny_config(tiny_data, tmp_path / "full", epochs=1, batch_size=2))
    cfg = tiny_config(tiny_data, tmp_path / "part", epochs=1, batch_size=2, save_every_steps=2)
    trainer = Trainer(cfg)
    original = trainer.train_one_epoch

    def interrupted(epoch: int):
        trainer.loader_len = len(trainer.loader)
        calls = {"n": 0}
        real_step = trainer.optimizer.step

        def step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 3:
                raise KeyboardInterrupt
            return real_step(*args, **kwargs)

        trainer.optimizer.step = step  # type: ignore[method-assign]
        return original(epoch)

    trainer.train_one_epoch = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    state = read_checkpoint(tmp_path / "part" / "last.pth").training
    assert state["epoch"] == 0 and state["step_in_epoch"] == 2
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "x", epochs=1, resume=str(tmp_path / "part"))).fit()
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_non_finite_losses_are_skipped_then_stop(tiny_data, tmp_path, monkeypatch):
    from dfine_cli.engine import criterion as criterion_module

    real = criterion_module.DFineCriterion.forward

    def poisoned(self, outputs, targets):
        out = real(self, outputs, targets)
        out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(criterion_module.DFineCriterion, "forward", poisoned)
    with pytest.raises(TrainingError, match="non-finite"):
        train(tiny_config(tiny_data, tmp_path / "nan", max_nonfinite=2, epochs=1))


def test_fine_tune_with_other_class_count_reinitialises_heads(tiny_data, tmp_path, caplog):
    base = Detector.from_preset("n", num_classes=80, img_size=320)
    src = base.save(tmp_path / "coco80.pth")
    with caplog.at_level("WARNING", logger="dfine.train"):
        train(tiny_config(tiny_data, tmp_path / "ft", epochs=1, tune=str(src)))
    assert any("re-initialised" in r.getMessage() and "enc_score_head" in r.getMessage() for r in caplog.records)


def test_config_rejects_unknown_keys():
    with pytest.raises(UsageError, match="unknown"):
        merge(TrainConfig(), {"epochz": 3}, "--set")
    cfg = merge(TrainConfig(), parse_set(["epochs=3", "amp=true", "augment={mixup_prob: 0.0}"]), "--set")
    assert cfg.epochs == 3 and cfg.amp is True and cfg.augment == {"mixup_prob": 0.0}
    with pytest.raises(UsageError, match="invalid value"):
        merge(TrainConfig(), {"epochs": "many"}, "--set")


def test_bad_dataset_fails_before_training(tiny_data, tmp_path):
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_data, broken)
    victim = next((broken / "images" / "train").iterdir())
    victim.unlink()
    with pytest.raises(DataError):
        train(tiny_config(broken, tmp_path / "run"))
    assert not (tmp_path / "run" / "last.pth").exists()


SLOW_SAVE = """
import io, os, sys, time, torch
import dfine_cli.checkpoint as ck
real_save = torch.save
calls = {"n": 0}
def slow_save(obj, path, *a, **k):
    calls["n"] += 1
    buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2]); fh.flush()
        if calls["n"] >= 3:
            sys.stderr.write("WRITING\\n"); sys.stderr.flush(); time.sleep(60)
        fh.write(data[len(data) // 2 :])
ck.torch.save = slow_save
from dfine_cli.cli.main import main
sys.argv = ["dfine"] + sys.argv[1:]
main()
"""


def test_kill_during_checkpoint_write_keeps_previous_and_resumes(tiny_data, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--epochs", "2", "--img-size", "320", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--output", str(out), "--set", "num_denoising=20",
            "--set", "save_every_steps=1"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.strip() == "WRITING":
            break
    before = (out / "last.pth").read_bytes()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "last.pth").read_bytes() == before
    state = read_checkpoint(out / "last.pth").training
    assert state is not None
    res = subprocess.run([sys.executable, "-m", "dfine_cli", "train", "--resume", str(out), "--json"],
                         capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_checkpoint(out / "last.pth").training["epoch"] == 2
    assert not list(out.glob(".*.tmp*"))
