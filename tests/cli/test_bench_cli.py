"""`dfine bench` in the shape of every other command: the backend from the file, AP as a
fraction, the engine first and --data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfine_cli.bench.compare import CompareRow, RunSpec
from dfine_cli.bench.latency import Stats
from dfine_cli.cli.main import app
from tests.helpers import tiny_checkpoint


def dfine(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from dfine_cli.export.run import ExportOptions, export_weights

    folder = tmp_path_factory.mktemp("m")
    ckpt = tiny_checkpoint(folder / "tiny.pth")
    return export_weights(ckpt, ExportOptions(check=False, simplify=False)).path


def test_latency_picks_the_backend_from_the_file_extension(onnx_model):
    result = dfine("bench", "latency", onnx_model, "--warmup", "0", "--iters", "1", "--json")
    assert result.exit_code == 0, result.stderr
    setup = json.loads(result.stdout)["setup"]
    assert setup["backend"] == "onnxruntime" and setup["device"] == "cpu"
    assert "onnxruntime" in setup["backend_description"]


def test_latency_of_a_preset_runs_on_torch_by_default():
    result = dfine("bench", "latency", "n", "--img-size", "256", "--warmup", "0", "--iters", "1",
                   "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["setup"]["backend"] == "torch"


def test_an_explicit_backend_that_does_not_fit_the_file_is_still_refused(onnx_model):
    result = dfine("bench", "latency", onnx_model, "--backend", "torch")
    assert result.exit_code == 2 and "is ONNX" in result.stderr


def test_compare_prints_ap_as_a_fraction_like_eval():
    stats = Stats.from_samples([10.0, 12.0])
    row = CompareRow("w.pth", RunSpec("torch"), stats, 1, "torch", ap=0.4321, ap50=0.61234,
                     delta_ap=-0.0123)
    cells = row.cells()
    assert cells[-3:] == ("0.4321", "0.6123", "-0.0123")
    assert row.to_dict()["AP"] == pytest.approx(0.4321)


def test_trt_takes_the_engine_first_and_data(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    old = dfine("bench", "trt", "--engine", engine, "--coco-dir", tmp_path)
    assert old.exit_code == 2  # the old spellings are gone
    missing = dfine("bench", "trt", engine, "--data", tmp_path / "nowhere")
    assert missing.exit_code in (3, 6) and missing.stderr.startswith("error:")
