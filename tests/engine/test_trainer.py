"""Training runs end to end on tiny data: checkpoints, resume, custom ids, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dfine_cli.checkpoints import read_checkpoint
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.detector import Detector
from dfine_cli.engine.config import TrainConfig, merge, parse_set
from dfine_cli.engine.run_lock import LOCK_NAME, RunFolderInUse, read_owner
from dfine_cli.engine.trainer import Trainer, train
from dfine_cli.errors import CheckpointError, DataError, TrainingError, UsageError


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
                device="cpu", output=str(out), seed=3, num_denoising=20, pretrained=False)
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
    # best.pth is what users ship: inference weights and model info, no training state.
    assert ckpt.training is None and read_checkpoint(run / "last.pth").training is not None
    assert (run / "best.pth").stat().st_size < 17e6 < 2 * 17e6 < (run / "last.pth").stat().st_size
    trained = torch.load(run / "best.pth", weights_only=True)["trained"]
    assert trained["epoch"] == result.best_epoch and trained["value"] == result.best_metric
    with pytest.raises(CheckpointError, match=r"best.pth holds only the inference weights; resume from .*last.pth"):
        Trainer(tiny_config(tiny_data, tmp_path / "other", resume=str(run / "best.pth")))
    assert ckpt.info.category_ids == [3, 7, 42]
    assert ckpt.info.class_names == ["square", "circle", "triangle"]
    det = Detector.from_checkpoint(run / "best.pth")
    out = det.predict(str(next((tiny_data / "images" / "val").iterdir())), conf=0.0, max_det=5)[0]
    assert set(out.category_ids) <= {3, 7, 42}
    assert set(out.names) <= {"square", "circle", "triangle"}


def test_cpu_training_runs_channels_last_and_saves_contiguous_weights(tiny_data, tmp_path, monkeypatch):
    """Eager CPU training keeps parameters, EMA copy and moments channels-last; the files hold
    contiguous tensors, so they load anywhere whatever layout the run trained in. Training
    keeps freed memory for reuse, as the inference commands do (dfine_cli.allocator)."""
    import dfine_cli.engine.trainer as trainer_module

    malloc: list[str] = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: malloc.append("set") or "set")
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "run", epochs=1))
    trainer.fit()
    assert malloc == ["set"]
    cl = torch.channels_last
    weight = trainer.model.backbone.stem.stem1.conv.weight
    assert weight.is_contiguous(memory_format=cl) and not weight.is_contiguous()
    assert trainer.ema is not None
    assert trainer.ema.module.backbone.stem.stem1.conv.weight.is_contiguous(memory_format=cl)
    assert all(m.is_contiguous(memory_format=cl) for m in trainer.optimizer.state[weight].values() if m.dim() == 4)
    last = read_checkpoint(tmp_path / "run" / "last.pth")
    assert last.training is not None
    for state in (last.state_dict, read_checkpoint(tmp_path / "run" / "best.pth").state_dict,
                  last.training["model"], last.training["ema"]["module"]):
        assert all(v.is_contiguous() for v in state.values())


def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path):
    full = train(tiny_config(tiny_data, tmp_path / "full"))
    train(tiny_config(tiny_data, tmp_path / "part", epochs=1))
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "ignored", epochs=2,
                                  resume=str(tmp_path / "part"))).fit()
    assert resumed.run_dir == tmp_path / "part"
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_of_a_run_saved_with_the_earlier_parameter_groups_is_bit_exact(tiny_data, tmp_path):
    """A ``last.pth`` from a dfine version whose groups gave ``in_proj_bias`` weight decay
    (its optimizer state has that layout and no parameter names) resumes: every moment is
    matched to its parameter by name, and the run ends where an uninterrupted one does."""
    from dfine_cli.engine.optim import build_param_groups, group_param_names
    from dfine_cli.engine.recipes import build_recipe
    from dfine_cli.models.build import build_model

    full = train(tiny_config(tiny_data, tmp_path / "full"))
    train(tiny_config(tiny_data, tmp_path / "part", epochs=1))
    path = tmp_path / "part" / "last.pth"
    payload = torch.load(path, weights_only=True)
    training = payload["training"]
    names = training.pop("optimizer_param_names")
    model = build_model("n", num_classes=3)
    optim = build_recipe("dfine", "n", 2, 320).optim
    legacy = group_param_names(model, build_param_groups(model, optim, suffix_bias=False))
    assert [len(g) for g in legacy] != [len(g) for g in names]  # the layouts really differ
    flat_new = [n for g in names for n in g]
    flat_old = [n for g in legacy for n in g]
    old_state = {flat_old.index(flat_new[i]): moments for i, moments in training["optimizer"]["state"].items()}
    groups, start = [], 0
    saved_groups = {g["name"]: g for g in training["optimizer"]["param_groups"]}
    for group, members in zip(build_param_groups(model, optim, suffix_bias=False), legacy):
        settings = {k: v for k, v in saved_groups[group["name"]].items() if k != "params"}
        groups.append({**settings, "params": list(range(start, start + len(members)))})
        start += len(members)
    training["optimizer"] = {"state": old_state, "param_groups": groups}
    torch.save(payload, path)
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "ignored", epochs=2,
                                  resume=str(tmp_path / "part"))).fit()
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
    assert not (tmp_path / "part" / LOCK_NAME).exists()  # released on KeyboardInterrupt
    state = read_checkpoint(tmp_path / "part" / "last.pth").training
    assert state["epoch"] == 0 and state["step_in_epoch"] == 2
    assert state["epoch_count"] == 2 and state["epoch_sums"]["loss"] > 0
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "x", epochs=1, resume=str(tmp_path / "part"))).fit()
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The epoch's logged losses average all its steps, not only those after the resume.
    losses = [k for k in full.history[0] if k == "loss" or k.startswith("loss_")]
    assert "loss" in losses and len(losses) > 3
    assert {k: resumed.history[0][k] for k in losses} == {k: full.history[0][k] for k in losses}


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
import dfine_cli.checkpoints.ours as ck
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
            "--set", "save_every_steps=1", "--no-pretrained"]
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


def test_output_holding_a_run_is_refused_unless_exist_ok(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pth").write_bytes(b"the previous run")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=f"run folder {out} is not empty .*--exist-ok"):
        train(tiny_config(tiny_data, out, epochs=1))
    assert (out / "best.pth").read_bytes() == b"the previous run"
    seen = []
    real = Trainer.train_one_epoch

    def spy(self, epoch):
        seen.append(read_owner(self.run_dir))
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", spy)
    result = train(tiny_config(tiny_data, out, epochs=1, exist_ok=True, eval_every=5))
    assert seen[0] is not None and seen[0].pid == os.getpid()  # locked while training
    assert not (out / LOCK_NAME).exists()  # and released after
    assert torch.load(result.best_checkpoint, weights_only=True)["trained"]["epoch"] == 1
    assert (out / "notes.txt").read_text() == "mine"


def _copy(data: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(data, to)
    return to


def test_corrupt_val_image_fails_before_the_first_step_and_leaves_no_folder(tiny_data, tmp_path, monkeypatch):
    from dfine_cli.engine import criterion as criterion_module

    broken = _copy(tiny_data, tmp_path / "broken")
    victim = sorted((broken / "images" / "val").iterdir())[0]
    victim.write_bytes(b"not an image")
    calls = []
    monkeypatch.setattr(criterion_module.DFineCriterion, "forward", lambda *a: calls.append(1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"1 dataset error\(s\).*val split .*1 × image file cannot be "
                                        rf"opened or decoded: image \d+ \({victim.name}\)"):
        train(tiny_config(broken, tmp_path / "unused", output=None, epochs=1))
    assert calls == []
    assert list((tmp_path / "runs" / "train").iterdir()) == []  # no empty exp folder left
    with pytest.raises(DataError):
        train(tiny_config(broken, tmp_path / "new" / "run", epochs=1))
    assert not (tmp_path / "new" / "run").exists()


def test_split_without_annotations_key_warns_and_no_boxes_at_all_refuses(tiny_data, tmp_path, caplog):
    data = _copy(tiny_data, tmp_path / "data")
    val = data / "annotations" / "instances_val.json"
    coco = json.loads(val.read_text())
    del coco["annotations"]
    val.write_text(json.dumps(coco))
    trainer = Trainer(tiny_config(data, tmp_path / "run"))
    with caplog.at_level("WARNING", logger="dfine.train"):
        trainer.setup()
    trainer.run_folder.close()
    assert any(r.getMessage().startswith(f"val split ({val}): 1 × the file has no 'annotations' list")
               for r in caplog.records)
    train_file = data / "annotations" / "instances_train.json"
    coco = json.loads(train_file.read_text())
    coco["annotations"] = []
    train_file.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="no split has a single box, nothing to learn from: train "):
        train(tiny_config(data, tmp_path / "run2"))
    assert not (tmp_path / "run2").exists()


def test_bad_settings_fail_before_anything_runs(tiny_data, tmp_path):
    for bad in (dict(eval_backend="bogus"), dict(metric="bogus"), dict(lr_scale=float("nan")),
                dict(workers=-1), dict(ema_decay=2.0), dict(num_denoising=-5)):
        with pytest.raises(UsageError, match=f"invalid setting {next(iter(bad))}="):
            Trainer(tiny_config(tiny_data, tmp_path / "run", **bad))
    assert not (tmp_path / "run").exists()


HOLD_LOCK = """
import sys, time
from dfine_cli.engine.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("HELD", flush=True)
time.sleep(300)
"""


def test_second_process_cannot_train_or_resume_in_a_live_run(tiny_data, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"stands for a checkpoint being written by the holder")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid} on host"):
            Trainer(tiny_config(tiny_data, tmp_path / "x", resume=str(out)))
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid} on host"):
            train(tiny_config(tiny_data, out, exist_ok=True))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / "last.pth").read_bytes().startswith(b"stands for")


def test_launcher_of_two_processes_holds_the_lock_for_its_workers(tiny_data, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "NO_COLOR": "1"}
    # long enough that it is still training when the second command starts (a loaded machine
    # takes seconds to start Python and torch); stopped with SIGTERM once the lock is checked
    cmd = [sys.executable, "-m", "dfine_cli", "train", "--data", str(tiny_data), "--epochs", "50",
           "--img-size", "320", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--output", str(out),
           "--nproc-per-node", "2", "--set", "num_denoising=20", "--set", "save_every_steps=1",
           "--no-pretrained", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        start = time.time()
        while not (out / "last.pth").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() - start < 600
            time.sleep(0.5)
        owner = read_owner(out)
        assert owner is not None and owner.pid == proc.pid  # the launcher, not a worker
        second = subprocess.run([sys.executable, "-m", "dfine_cli", "train", "--resume", str(out)],
                                capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 2 and f"is in use: pid {proc.pid} on host" in second.stderr
        assert proc.poll() is None  # the launcher was still training during the check
        proc.terminate()  # SIGTERM: the run stops, its workers with it, and the lock goes
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 143, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / LOCK_NAME).exists()
    assert read_checkpoint(out / "last.pth").training["epoch"] < 50


class _ScriptedEval:
    """Stands in for ``Trainer.evaluate``: val AP by epoch number, from a script."""

    def __init__(self, ap_by_epoch: dict[int, float], interrupt_at: int | None = None) -> None:
        self.ap_by_epoch, self.interrupt_at = ap_by_epoch, interrupt_at

    def __call__(self, trainer: Trainer):
        epoch = len(trainer.history) + 1  # the epoch being evaluated (history holds earlier ones)
        if epoch == self.interrupt_at:
            raise KeyboardInterrupt
        stats = {"AP": self.ap_by_epoch[epoch], "AP50": self.ap_by_epoch[epoch]}

        class _Result:
            def __init__(self) -> None:
                self.stats = stats

            def write_json(self, path: Path) -> None:
                Path(path).write_text(json.dumps(self.stats))

        return _Result()

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(Trainer, "evaluate", lambda trainer: self(trainer))


def _record_epoch_starts(monkeypatch) -> dict[str, dict[int, dict[str, torch.Tensor]]]:
    """Capture the raw weights at the start and end of every epoch (0-based index)."""
    starts: dict[int, dict[str, torch.Tensor]] = {}
    ends: dict[int, dict[str, torch.Tensor]] = {}
    original = Trainer.train_one_epoch

    def wrapped(self: Trainer, epoch: int):
        starts[epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        out = original(self, epoch)
        ends[epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return out

    monkeypatch.setattr(Trainer, "train_one_epoch", wrapped)
    return {"starts": starts, "ends": ends}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


STAGE2_AP = {1: 0.30, 2: 0.20, 3: 0.25, 4: 0.50}  # stage-1 best is epoch 1; epoch 3 does not improve


def test_stage2_best_starts_from_the_best_stage1_epoch_and_reloads_after_no_improvement(
        tiny_data, tmp_path, monkeypatch):
    record = _record_epoch_starts(monkeypatch)
    _ScriptedEval(STAGE2_AP).install(monkeypatch)
    cfg = tiny_config(tiny_data, tmp_path / "run", epochs=4, augment={"policy_epochs": [2]},
                      ema_decay=0.995)
    result = Trainer(cfg).fit()
    starts, ends = record["starts"], record["ends"]
    # The first stage-2 epoch (index 2) starts from the end of epoch 1, the best stage-1 epoch,
    # not from the end of epoch 2 where stage 1 stopped.
    assert _same(starts[2], ends[0]) and not _same(starts[2], ends[1])
    # Epoch 3 did not beat 0.30: the last epoch starts from the stage-1 best again.
    assert _same(starts[3], ends[0]) and not _same(starts[3], ends[2])
    stage1 = read_checkpoint(tmp_path / "run" / "best_stg1.pth").training
    assert stage1["epoch"] == 1 and _same(stage1["model"], ends[0])
    assert [h["stage"] for h in result.history] == [1, 1, 2, 2]
    assert result.history[2]["started_from_epoch"] == 1
    assert result.best_epoch == 4
    last = read_checkpoint(tmp_path / "run" / "last.pth").training
    assert last["stage2_reloads"] == 2
    # The reloads leave the EMA decay as the run set it: the official solvers' assignments to
    # ``ema.decay`` never reach their EMA's updates (engine/stages.py).
    assert last["ema"]["decay"] == 0.995


def test_stage2_continue_trains_straight_on(tiny_data, tmp_path, monkeypatch):
    record = _record_epoch_starts(monkeypatch)
    _ScriptedEval(STAGE2_AP).install(monkeypatch)
    cfg = tiny_config(tiny_data, tmp_path / "run", epochs=3, augment={"policy_epochs": [2]},
                      stage2="continue")
    Trainer(cfg).fit()
    assert _same(record["starts"][2], record["ends"][1])
    assert not (tmp_path / "run" / "best_stg1.pth").exists()


def test_stage2_reload_survives_a_resume(tiny_data, tmp_path, monkeypatch):
    _ScriptedEval(STAGE2_AP).install(monkeypatch)
    cfg = dict(epochs=4, augment={"policy_epochs": [2]})
    full = Trainer(tiny_config(tiny_data, tmp_path / "full", **cfg)).fit()
    # Stopped while evaluating epoch 3: last.pth is from epoch 2, the stage-1 best in best_stg1.pth.
    _ScriptedEval(STAGE2_AP, interrupt_at=3).install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tiny_data, tmp_path / "part", **cfg)).fit()
    _ScriptedEval(STAGE2_AP).install(monkeypatch)
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "x", resume=str(tmp_path / "part"), **cfg)).fit()
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    assert _same(a, b)


@pytest.mark.parametrize("native", [False, True, None])
def test_cpu_amp_warns_where_bf16_is_emulated(monkeypatch, caplog, native) -> None:
    from dfine_cli import devices
    from dfine_cli.engine import trainer as trainer_module

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda *a, **k: native)
    caplog.set_level("WARNING", logger="dfine.train")
    context, scaler = trainer_module._autocast(torch.device("cpu"), TrainConfig(data="d", amp=True))
    assert scaler is None and isinstance(context, torch.autocast)
    warned = [r.getMessage() for r in caplog.records if "bf16 runs emulated" in r.getMessage()]
    assert len(warned) == (1 if native is False else 0)
    caplog.clear()
    trainer_module._autocast(torch.device("cpu"), TrainConfig(data="d", amp=False))
    assert not caplog.records
