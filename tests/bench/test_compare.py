"""`dfine bench compare`: options, planning, and latency next to AP on a small dataset."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from dfine_cli.bench.compare import RunSpec, compare, parse_run, runs_for
from dfine_cli.errors import DataError, UsageError
from tests.helpers import tiny_checkpoint


def run(*args: str) -> subprocess.CompletedProcess[str]:
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    res = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from dfine_cli.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, num_images=10, num_classes=3, img_size=256)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("cmp") / "tiny.pth", img_size=256)


def test_parse_run():
    assert parse_run("openvino:BF16") == RunSpec("openvino", "bf16")
    assert parse_run("torch") == RunSpec("torch", "fp32")
    for bad in ("tflite", "torch:int8"):
        with pytest.raises(UsageError):
            parse_run(bad)


def test_runs_for_file_types():
    runs = [RunSpec("torch"), RunSpec("onnxruntime"), RunSpec("tensorrt")]
    assert runs_for("m.engine", runs) == [RunSpec("tensorrt")]
    assert runs_for("m.onnx", runs) == [RunSpec("onnxruntime")]
    assert runs_for("m.pth", runs) == [RunSpec("torch"), RunSpec("onnxruntime")]


def test_compare_torch_and_onnxruntime_on_a_dataset(ckpt, dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    rows = compare([str(ckpt)], [RunSpec("torch"), RunSpec("onnxruntime")], data=dataset,
                   threads=2, warmup=0, iters=2, work_dir=tmp_path)
    assert [r.run.backend for r in rows] == ["torch", "onnxruntime"]
    assert all(r.ap is not None and r.latency.samples == 2 for r in rows)
    assert rows[0].delta_ap == 0.0
    assert rows[1].delta_ap is not None and abs(rows[1].delta_ap) < 1e-3  # same model, same AP
    assert rows[1].cells()[1] == "onnxruntime"


def test_compare_validates_every_option_first(ckpt, tmp_path):
    with pytest.raises(UsageError, match="does not run bf16"):
        compare([str(ckpt)], [RunSpec("torch"), RunSpec("onnxruntime", "bf16")],
                work_dir=tmp_path)
    with pytest.raises(UsageError, match="not found"):
        compare([str(tmp_path / "nope.pth")], [RunSpec("torch")], work_dir=tmp_path)


def test_compare_rejects_a_model_of_other_classes(dataset, tmp_path):
    with pytest.raises(DataError, match="classes"):
        compare(["n"], [RunSpec("torch")], data=dataset, img_size=256, warmup=0, iters=1,
                work_dir=tmp_path)


def test_compare_cli_json(ckpt):
    res = run("bench", "compare", str(ckpt), "--run", "torch", "--run", "torch:bf16",
              "--warmup", "0", "--iters", "1", "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and [r["precision"] for r in payload["rows"]] == [
        "fp32", "bf16"]
    assert payload["rows"][0]["AP"] is None
    assert run("bench", "compare", str(ckpt), "--run", "cuda").returncode == 2


def test_int8_runs_on_openvino_and_needs_data(ckpt, tmp_path):
    assert parse_run("openvino:int8") == RunSpec("openvino", "int8")
    assert parse_run("openvino:INT8+bf16") == RunSpec("openvino", "int8+bf16")
    for text in ("onnxruntime:int8", "torch:int8+bf16"):
        with pytest.raises(UsageError, match="openvino only"):
            parse_run(text)
    for precision in ("int8", "int8+bf16"):
        with pytest.raises(UsageError, match=re.escape(f"openvino:{precision} needs --data")):
            compare([str(ckpt)], [RunSpec("openvino", precision)], work_dir=tmp_path)
    runs = [RunSpec("openvino"), RunSpec("openvino", "bf16"), RunSpec("openvino", "int8"),
            RunSpec("openvino", "int8+bf16")]
    assert runs_for("m.xml", runs) == runs[:2]  # an IR's precision is in the file
    assert runs_for("m.onnx", runs) == runs[:2]
    assert runs_for("m.pth", runs) == runs


@pytest.mark.parametrize("bf16", [False, True])
def test_default_runs_add_int8_only_with_data(monkeypatch, bf16):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from dfine_cli.bench import latency
    from dfine_cli.bench.compare import default_runs

    monkeypatch.setattr(latency, "cpu_description", lambda: {"bf16": bf16})
    assert RunSpec("openvino", "int8") not in default_runs()
    assert RunSpec("openvino", "int8+bf16") not in default_runs()
    with_data = default_runs(int8=True)
    assert RunSpec("openvino", "int8") in with_data
    assert (RunSpec("openvino", "int8+bf16") in with_data) is bf16
    assert (RunSpec("openvino", "bf16") in with_data) is bf16


def test_int8_and_int8_bf16_share_one_quantized_model(ckpt, dataset, tmp_path, monkeypatch):
    """Both rows run the same IR (quantized once), the second with its float parts in bf16;
    a float IR stands in for the quantized one (NNCF takes minutes: see tests/export)."""
    openvino = pytest.importorskip("openvino")
    from dfine_cli.bench import compare as cmp
    from dfine_cli.detector import Detector
    from dfine_cli.errors import HardwareError
    from dfine_cli.export.openvino_ir import export_openvino

    det = Detector.from_checkpoint(ckpt)
    assert det.model is not None and det.info is not None
    xml = tmp_path / "stand_in.xml"
    export_openvino(det.model, det.info, xml, img_size=(256, 256), check=False)
    made: list[str] = []

    def fake_int8_model(weights: str, *args: object, **kwargs: object) -> Path:
        made.append(weights)
        return xml

    monkeypatch.setattr(cmp, "int8_model", fake_int8_model)
    runs = [RunSpec("openvino", "int8"), RunSpec("openvino", "int8+bf16")]
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(HardwareError, match="cannot run bf16"):
            compare([str(ckpt)], runs, data=dataset, work_dir=tmp_path, warmup=0, iters=1)
        assert made == []  # refused before anything was quantized or measured
        return
    rows = compare([str(ckpt)], runs, data=dataset, work_dir=tmp_path, threads=2, warmup=0,
                   iters=1)
    assert [r.run.precision for r in rows] == ["int8", "int8+bf16"] and made == [str(ckpt)]
    assert "bf16" in rows[1].description and rows[0].ap is not None and rows[1].ap is not None


def test_a_precision_the_cpu_lacks_fails_before_anything_is_measured(ckpt, dataset, tmp_path,
                                                                     monkeypatch):
    pytest.importorskip("openvino")
    from dfine_cli.backends import openvino_backend
    from dfine_cli.bench import compare as cmp
    from dfine_cli.errors import HardwareError

    real = openvino_backend.check_precision_supported
    monkeypatch.setattr(openvino_backend, "check_precision_supported",
                        lambda precision, caps: real(precision, ["FP32", "INT8"]))
    measured: list[object] = []
    monkeypatch.setattr(cmp, "measure_latency", lambda *a, **k: measured.append(a))
    monkeypatch.setattr(cmp, "int8_model", lambda *a, **k: measured.append(a))
    for last in ("bf16", "int8+bf16"):
        runs = [RunSpec("torch"), RunSpec("openvino", "int8"), RunSpec("openvino", last)]
        with pytest.raises(HardwareError, match="cannot run bf16"):
            compare([str(ckpt)], runs, data=dataset, work_dir=tmp_path, warmup=0, iters=1)
    assert measured == []
