"""`dfine train` refusals: one stderr line, the documented exit code, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dfine_cli.cli.main import app
from dfine_cli.data.synth import make_synthetic_dataset

runner = CliRunner()
FAST = ["--img-size", "320", "--epochs", "1", "--device", "cpu", "--no-pretrained"]


def dfine(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(result: Any, code: int, text: str) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-cli") / "shapes"
    make_synthetic_dataset(root, num_images=8, num_classes=2, seed=0, img_size=64)
    return root


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("workers=-1", "error: usage error: invalid setting workers=-1: must be an integer >= 0"),
        ("ema_decay=2", "error: usage error: invalid setting ema_decay=2.0: must be a number in [0, 1)"),
        ("num_denoising=-5", "error: usage error: invalid setting num_denoising=-5: must be an integer >= 0"),
        ("lr_scale=nan", "error: usage error: invalid setting lr_scale=nan: must be a finite number > 0"),
        ("eval_backend=bogus",
         "error: usage error: invalid setting eval_backend='bogus': must be one of faster, pycocotools"),
        ("metric=bogus", "error: usage error: invalid setting metric='bogus': must be one of AP, AP50, AP75, "
                         "APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl"),
    ],
)
def test_bad_setting_is_exit_2_before_anything(shapes, tmp_path, monkeypatch, setting, message):
    monkeypatch.chdir(tmp_path)
    result = dfine("train", "--data", shapes, *FAST, "--set", setting)
    assert _one_error_line(result, 2, message) == message
    assert not (tmp_path / "runs").exists()


def test_img_size_too_small_for_the_queries_is_exit_2(shapes, tmp_path):
    result = dfine("train", "--data", shapes, "--img-size", "64", "--output", tmp_path / "run")
    message = ("error: usage error: invalid setting img_size=64: D-FINE-N needs at least 256 (its queries "
               "need as many feature-map positions)")
    assert _one_error_line(result, 2, message) == message


def test_output_holding_a_run_is_exit_2_naming_the_ways_out(shapes, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pth", "best.pth"):
        (out / name).write_bytes(b"previous")
    result = dfine("train", "--data", shapes, *FAST, "--output", out)
    line = _one_error_line(result, 2, f"run folder {out} is not empty")
    assert line == (f"error: usage error: run folder {out} is not empty (last.pth, best.pth); pass "
                    f"--exist-ok to start a new run over it, or --resume {out} to continue that run")
    assert (out / "best.pth").read_bytes() == b"previous"


def test_no_box_in_any_split_is_exit_3(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    for split in ("train", "val"):
        path = data / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text())
        del coco["annotations"]
        path.write_text(json.dumps(coco))
    result = dfine("train", "--data", data, *FAST, "--output", tmp_path / "run")
    line = _one_error_line(result, 3, "error: data error: no split has a single box, nothing to learn from: ")
    assert line.endswith(f"val ({data / 'annotations' / 'instances_val.json'}): no 'annotations' key")
    assert not (tmp_path / "run").exists()


def test_corrupt_val_image_is_exit_3_listing_it(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    victim = sorted((data / "images" / "val").iterdir())[0]
    victim.write_bytes(b"not an image")
    result = dfine("train", "--data", data, *FAST, "--output", tmp_path / "run")
    _one_error_line(result, 3, f"error: data error: 1 dataset error(s), found before training: val split "
                               f"({data / 'annotations' / 'instances_val.json'}): 1 × image file cannot be "
                               f"opened or decoded: image")
    assert victim.name in result.stderr
    assert not (tmp_path / "run").exists()


HOLD_LOCK = """
import sys, time
from dfine_cli.engine.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("HELD", flush=True)
time.sleep(300)
"""


def test_resume_of_a_live_run_is_exit_2_naming_pid_and_host(tmp_path):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        result = subprocess.run([sys.executable, "-m", "dfine_cli", "train", "--resume", str(run)],
                                capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert lines == [f"error: usage error: run folder {run} is in use: pid {holder.pid} on host "
                         f"{socket.gethostname()} (since {_since(run)}) is training in it; wait for it to "
                         "finish or stop it (a lock whose process is gone is taken over automatically)"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def _since(run: Path) -> str:
    from dfine_cli.engine.run_lock import read_owner

    owner = read_owner(run)
    assert owner is not None
    return owner.started


def test_sigterm_releases_the_run_folder_lock(shapes, tmp_path):
    import time

    from dfine_cli.engine.run_lock import LOCK_NAME

    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "dfine_cli", "train", "--data", str(shapes), *FAST, "--workers", "0",
           "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        start = time.time()
        while not (out / LOCK_NAME).exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() - start < 300
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    assert not (out / LOCK_NAME).exists()


def test_exist_ok_flag_reaches_the_run_folder_check(shapes, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pth").write_bytes(b"previous")
    (out / ".train.lock").write_text(json.dumps({"pid": 7, "host": "elsewhere", "started": "x", "token": "t"}))
    result = dfine("train", "--data", shapes, *FAST, "--output", out, "--exist-ok")
    # Past the "not empty" refusal (--exist-ok), stopped by the live lock of another host.
    _one_error_line(result, 2, f"error: usage error: run folder {out} is in use: pid 7 on host elsewhere")
    assert (out / "best.pth").read_bytes() == b"previous"
