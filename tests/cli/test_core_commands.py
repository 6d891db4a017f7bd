"""The command line as scripts use it: exit codes, stdout/stderr, JSON, output files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_jpeg
from tests.helpers import tiny_checkpoint


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "dfine_cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("c") / "tiny.pth", names=["a", "b", "c"])


def test_version_and_help():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("dfine ")
    helped = run("--help")
    for command in ("train", "eval", "predict", "export", "info", "weights", "demo", "data"):
        assert command in helped.stdout
    text = " ".join(helped.stdout.split())
    assert "Exit codes: 0 success" in text  # the root help lists them (not only the docs)
    for code in ("2 usage", "3 data", "4 model/checkpoint", "8 file system", "141", "143"):
        assert code in text


def test_unknown_flag_is_usage_error(ckpt):
    out = run("predict", str(ckpt), "x.jpg", "--bogus")
    assert out.returncode == 2


def test_predict_folder_json(ckpt, tmp_path):
    for i in range(3):
        write_jpeg(tmp_path / "imgs" / f"im{i}.jpg", seed=i)
    out_dir = tmp_path / "out"
    res = run("predict", str(ckpt), str(tmp_path / "imgs"), "--conf", "0.0", "--json",
              "--output", str(out_dir), "--batch-size", "2")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and payload["images"] == 3
    record = payload["results"][0]
    assert set(record) >= {"path", "width", "height", "detections"}
    assert record["detections"][0]["name"] in {"a", "b", "c"}
    assert sorted(p.name for p in out_dir.iterdir()) == ["im0.jpg", "im1.jpg", "im2.jpg", "predictions.json"]
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines()[-1] == f"Results saved to {out_dir}"


def test_predict_default_run_dirs_are_numbered(ckpt, tmp_path):
    img = write_jpeg(tmp_path / "a.jpg")
    for _ in range(2):
        assert run("predict", str(ckpt), str(img), cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "predict").iterdir()) == ["exp", "exp2"]


def test_predict_glob_and_video(ckpt, tmp_path):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, dtype=np.uint8))
    writer.release()
    res = run("predict", str(ckpt), str(video), "--json", "--output", str(tmp_path / "o"), "--conf", "0.0")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["videos"] == 1 and payload["frames"] == 4
    assert (tmp_path / "o" / "clip.mp4").stat().st_size > 0


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: d / "missing.jpg", 3),
        (lambda d: (d / "bad.jpg").write_bytes(b"junk") and d / "bad.jpg", 3),
        (lambda d: (d / "bad.mp4").write_bytes(b"junk") and d / "bad.mp4", 3),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", 3),
    ],
    ids=["missing", "corrupt-image", "unreadable-video", "unsupported-file"],
)
def test_predict_bad_sources(ckpt, tmp_path, make, code):
    src = make(tmp_path)
    out_dir = tmp_path / "out"
    res = run("predict", str(ckpt), str(src), "--output", str(out_dir))
    assert res.returncode == code
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: data error")
    assert "Traceback" not in res.stderr
    leftovers = [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else []
    assert leftovers == []


def test_bad_checkpoints_exit_4(tmp_path):
    img = write_jpeg(tmp_path / "a.jpg")
    evil = tmp_path / "evil.pth"
    code = (f"import torch, os\nclass E:\n    def __reduce__(self): return (os.system, ('touch {tmp_path}/pwned',))\n"
            f"torch.save({{'model': E()}}, {str(evil)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"definitely not torch")
    for path in (evil, wrong, tmp_path / "nope.pth"):
        res = run("predict", str(path), str(img), "--output", str(tmp_path / "o"))
        assert res.returncode == 4, res.stderr
        assert res.stderr.startswith("error: model error") and "Traceback" not in res.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_verbose_shows_traceback(tmp_path):
    res = run("--verbose", "info", str(tmp_path / "nope.pth"))
    assert res.returncode == 4 and "Traceback" in res.stderr


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_verbose_is_accepted_after_the_command(tmp_path, flag):
    res = run("info", str(tmp_path / "nope.pth"), flag)
    assert res.returncode == 4 and "Traceback" in res.stderr
    quiet = run("info", str(tmp_path / "nope.pth"))
    assert quiet.returncode == 4 and "Traceback" not in quiet.stderr


def test_cuda_device_without_gpu_exit_6(ckpt, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = run("predict", str(ckpt), str(write_jpeg(tmp_path / "a.jpg")), "--device", "cuda")
    assert res.returncode == 6 and "no CUDA GPU" in res.stderr


def test_info_and_weights_convert(ckpt, tmp_path):
    info = run("info", str(ckpt), "--json")
    assert info.returncode == 0
    data = json.loads(info.stdout)
    assert data["size"] == "n" and data["num_classes"] == 3 and data["class_names"] == ["a", "b", "c"]
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n")
    dst = tmp_path / "converted.pth"
    res = run("weights", "convert", str(ckpt), str(dst), "--names", str(names), "--variant", "deim")
    assert res.returncode == 0, res.stderr
    data = json.loads(run("info", str(dst), "--json").stdout)
    assert data["class_names"] == ["red", "green", "blue"] and data["variant"] == "deim"


def test_weights_convert_official(reference_dir, tmp_path):
    dst = tmp_path / "ours.pth"
    res = run("weights", "convert", str(reference_dir / "dfine_n_keyed1234.pth"), str(dst), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["source_format"] == "official"
    data = json.loads(run("info", str(dst), "--json").stdout)
    assert data["source_format"] == "dfine" and data["num_classes"] == 80


def test_export_cli_and_onnx_predict(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "tiny.onnx"
    res = run("export", str(ckpt), "--format", "onnx", "--output", str(onnx_path), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["schema_version"] == 1 and report["dynamic_batch"] is True
    assert set(report["checks"]) == {"1", "3"}
    img = write_jpeg(tmp_path / "a.jpg")
    res = run("predict", str(onnx_path), str(img), "--json", "--conf", "0", "--output", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["detections"][0]["name"] in {"a", "b", "c"}
    res = run("predict", str(onnx_path), str(img), "--backend", "torch")
    assert res.returncode == 2


def test_demo(tmp_path):
    res = run("demo", "--output", str(tmp_path / "d"), "--json", "--epochs", "1", "--images", "12",
              "--no-export")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and 0.0 <= payload["val_AP"] <= 1.0
    out = tmp_path / "d"
    for name in ("metrics.json", "train/best.pth", "train/metrics.csv", "data/annotations/instances_val.json"):
        assert (out / name).is_file(), name
    assert list((out / "predict").glob("*.jpg"))


def test_eval_cli_json_and_files(ckpt, tmp_path):
    from dfine_cli.data.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", num_images=10, num_classes=3, seed=4, img_size=320)
    res = run("eval", str(ckpt), "--data", str(tmp_path / "data"), "--json", "--output", str(tmp_path / "ev"),
              "--workers", "0")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and set(payload["stats"]) >= {"AP", "AP50", "ARl"}
    assert payload["precision"] == "fp32" and payload["compiled"] is False
    bf16 = run("eval", str(ckpt), "--data", str(tmp_path / "data"), "--json", "--output",
               str(tmp_path / "ev16"), "--workers", "0", "--bf16")
    assert bf16.returncode == 0, bf16.stderr
    assert json.loads(bf16.stdout)["precision"] == "bf16"
    assert (tmp_path / "ev" / "metrics.json").is_file() and (tmp_path / "ev" / "per_class.csv").is_file()
    assert res.stderr.splitlines()[-1] == f"Results saved to {tmp_path / 'ev'}"
    numbered = run("eval", str(ckpt), "--data", str(tmp_path / "data"), "--workers", "0", cwd=tmp_path)
    assert numbered.returncode == 0, numbered.stderr
    assert numbered.stderr.splitlines()[-1] == "Results saved to runs/eval/exp"
    assert "AP50" in numbered.stdout and "Results saved" not in numbered.stdout
    wrong = run("eval", str(ckpt), "--data", str(tmp_path / "nowhere"))
    assert wrong.returncode in (2, 3) and wrong.stderr.startswith("error:")
