"""`dfine bench trt`: the official COCO latency loop, run here with ONNX Runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import count

import pytest

from dfine_cli.bench.trt_coco import coco_latency, list_images
from dfine_cli.errors import DataError, UsageError
from tests.conftest import write_jpeg


def test_list_images_sorted_and_limited(tmp_path):
    for name in ("b.jpg", "a.png", "c.JPG"):
        write_jpeg(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg", "c.JPG"]
    assert len(list_images(tmp_path, limit=2)) == 2
    with pytest.raises(UsageError):
        list_images(tmp_path, limit=0)
    with pytest.raises(DataError):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        list_images(tmp_path / "empty")


def test_coco_latency_times_only_the_backend(tmp_path):
    from dfine_cli.backends.base import BackendMeta
    from dfine_cli.detector import Detector

    calls = []

    class Backend:
        meta = BackendMeta(img_size=(64, 64), class_names=["a"], category_ids=[1],
                           description="fake")

        def __call__(self, images, sizes):
            calls.append(images.shape)
            return None

    for i in range(4):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    ticks = count()
    result = coco_latency(Detector(Backend()), list_images(tmp_path), warmup=3,
                          clock=lambda: next(ticks) / 1000.0)
    assert len(calls) == 7 and calls[0] == (1, 3, 64, 64)
    assert result.images == 4 and result.model.mean_ms == pytest.approx(1.0)
    assert result.to_dict()["latency_ms_mean"] == pytest.approx(1.0)


def test_coco_latency_with_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from dfine_cli.detector import Detector
    from dfine_cli.export.onnx import export_onnx

    det = Detector.from_preset("n", num_classes=3, img_size=256)
    assert det.model is not None and det.info is not None
    path = export_onnx(det.model, det.info, tmp_path / "n.onnx", img_size=(256, 256),
                       check=False).path
    for i in range(3):
        write_jpeg(tmp_path / "imgs" / f"{i}.jpg", seed=i)
    result = coco_latency(Detector.load(path, threads=2), list_images(tmp_path / "imgs"), warmup=1)
    assert result.images == 3 and result.model.min_ms > 0 and "onnxruntime" in result.description


def test_bench_trt_without_gpu_exits_6(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_jpeg(tmp_path / "imgs" / "a.jpg")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    res = subprocess.run([sys.executable, "-m", "dfine_cli", "bench", "trt",
                          str(engine), "--data", str(tmp_path / "imgs")],
                         capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
                         timeout=600)
    assert res.returncode == 6 and len(res.stderr.strip().splitlines()) == 1
