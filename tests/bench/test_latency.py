"""`dfine bench latency`: stage timing, statistics, the JSON schema, and usage errors."""

from __future__ import annotations

import json
import subprocess
from itertools import count
from pathlib import Path

import numpy as np
import pytest

from dfine_cli.backends.base import BackendMeta
from dfine_cli.bench.latency import (
    STAGES,
    Stats,
    cpu_flags,
    cpu_supports_bf16,
    is_preset_name,
    measure_latency,
    synthetic_images,
)
from dfine_cli.detector import Detector
from dfine_cli.errors import UsageError
from tests.helpers import tiny_checkpoint


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in-process (a subprocess would spend seconds importing torch per call)."""
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    res = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("lat") / "tiny.pth", img_size=256)


def test_stats_nearest_rank():
    s = Stats.from_samples([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert (s.median_ms, s.p90_ms, s.min_ms, s.mean_ms, s.samples) == (5.5, 9.0, 1.0, 5.5, 10)
    with pytest.raises(ValueError):
        Stats.from_samples([])


def test_cpu_flag_parsing():
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    flags = cpu_flags(text)
    assert "avx512_bf16" in flags and cpu_supports_bf16(flags)
    assert not cpu_supports_bf16({"avx2", "fma"}) and cpu_supports_bf16({"amx_bf16"})


def test_preset_names_are_sizes_that_are_not_files():
    assert is_preset_name("n") and not is_preset_name("n.pth")


class _FakeBackend:
    """Returns fixed detections; the fake clock below attributes time to each stage."""

    def __init__(self) -> None:
        self.meta = BackendMeta(img_size=(64, 64), class_names=["a"], category_ids=[1])
        self.calls = 0

    def __call__(self, images, sizes):
        self.calls += 1
        n = images.shape[0]
        return (np.zeros((n, 5), np.int64), np.tile(np.arange(4, dtype=np.float32), (n, 5, 1)),
                np.linspace(0.9, 0.1, 5, dtype=np.float32)[None].repeat(n, 0))


def test_measure_latency_attributes_stages():
    ticks = count()
    clock = lambda: float(next(ticks)) / 1000.0  # noqa: E731 - every call advances 1 ms
    backend = _FakeBackend()
    stages = measure_latency(Detector(backend), synthetic_images(3, 80, 60), batch_size=2,
                             warmup=2, iters=5, clock=clock)
    assert backend.calls == 7 and set(stages) == set(STAGES)
    assert all(stages[s].samples == 5 for s in STAGES)
    assert stages["preprocess"].median_ms == pytest.approx(1.0)
    assert stages["end_to_end"].median_ms == pytest.approx(3.0)
    with pytest.raises(UsageError):
        measure_latency(Detector(backend), [], iters=1)


def test_bench_latency_json_schema(ckpt):
    res = run("bench", "latency", str(ckpt), "--threads", "2", "--warmup", "1", "--iters", "3",
              "--batch-size", "2", "--source-size", "320x240", "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and payload["command"] == "bench latency"
    assert set(payload["stages"]) == set(STAGES)
    for stats in payload["stages"].values():
        assert set(stats) == {"median_ms", "p90_ms", "min_ms", "mean_ms", "samples"}
        assert stats["samples"] == 3 and 0 <= stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    setup = payload["setup"]
    for key in ("weights", "backend", "backend_description", "precision", "device", "threads",
                "batch_size", "img_size", "source_size", "warmup", "iters", "compiled", "versions",
                "cpu"):
        assert key in setup
    assert setup["compiled"] is False
    assert setup["threads"] == 2 and setup["batch_size"] == 2 and setup["img_size"] == [256, 256]
    assert setup["source_size"] == [320, 240] and setup["versions"]["torch"]
    assert payload["throughput_images_per_s"] > 0


def test_bench_latency_onnxruntime_exports_first(ckpt):
    pytest.importorskip("onnxruntime")
    res = run("bench", "latency", str(ckpt), "--backend", "onnxruntime", "--threads", "2",
              "--warmup", "0", "--iters", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert "onnxruntime" in json.loads(res.stdout)["setup"]["backend_description"]


def test_bench_latency_table_and_usage_errors(ckpt, tmp_path):
    res = run("bench", "latency", "n", "--img-size", "256", "--warmup", "0", "--iters", "1")
    assert res.returncode == 0 and "end_to_end" in res.stdout and "throughput" in res.stdout
    assert run("bench", "latency", str(ckpt), "--fp16", "--bf16").returncode == 2
    assert run("bench", "latency", str(ckpt), "--backend", "tensorrt").returncode == 2
    assert run("bench", "latency", str(ckpt), "--backend", "onnxruntime", "--bf16").returncode == 2
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    res = run("bench", "latency", str(engine), "--backend", "tensorrt", "--device", "cuda")
    assert res.returncode == 6 and ("TensorRT" in res.stderr or "CUDA" in res.stderr)


@pytest.mark.parametrize("native", [False, True])
def test_torch_bf16_on_a_cpu_without_bf16_warns(ckpt, tmp_path, monkeypatch, caplog, native):
    from dfine_cli import devices
    from dfine_cli.bench.latency import load_bench_detector

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda *a, **k: native)
    caplog.set_level("WARNING", logger="dfine.bench.latency")
    loaded = load_bench_detector(str(ckpt), backend="torch", precision="bf16", work_dir=tmp_path)
    assert loaded.precision == "bf16"
    warned = [r for r in caplog.records if "bf16 runs emulated" in r.getMessage()]
    assert len(warned) == (0 if native else 1)


@pytest.mark.slow  # a minute of C++ compilation on a 2-core CPU
def test_bench_latency_compiles_in_a_warmup_run_it_always_has(ckpt):
    pytest.importorskip("torch._inductor")
    from dfine_cli.errors import DependencyError
    from dfine_cli.torch_compile import check_compile_support

    try:
        check_compile_support()
    except DependencyError as exc:
        pytest.skip(str(exc))
    res = run("bench", "latency", str(ckpt), "--threads", "2", "--warmup", "0", "--iters", "2",
              "--compile", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    setup = json.loads(res.stdout)["setup"]
    assert setup["compiled"] is True and setup["warmup"] == 1
