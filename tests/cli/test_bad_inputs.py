"""Bad inputs and faults across commands: one line, the right category, nothing lost or left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dfine_cli.cli.main import app
from tests.conftest import write_jpeg
from tests.helpers import tiny_checkpoint

runner = CliRunner()


def dfine(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _errors(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _one_error(result: Any, code: int, text: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout[-500:], result.stderr)
    errors = _errors(result)
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("c") / "tiny.pth", names=["a", "b", "c"])


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- predict: one bad input costs nothing else -------------------------------------------------
def test_predict_keeps_going_past_an_undecodable_image(ckpt, in_tmp):
    folder = in_tmp / "imgs"
    for i in range(2):
        write_jpeg(folder / f"im{i}.jpg", seed=i)
    (folder / "bad.jpg").write_bytes(b"not an image")
    result = dfine("predict", ckpt, folder, "--json", "--conf", "0.3")
    assert result.exit_code == 3, result.stderr
    payload = json.loads(result.stdout)
    assert payload["images"] == 2 and len(payload["results"]) == 2
    assert payload["errors"] == [
        {"path": str(folder / "bad.jpg"),
         "error": f"cannot decode image (corrupt or unsupported format): {folder / 'bad.jpg'}"}
    ]
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert warnings == [
        f"WARNING skipped: cannot decode image (corrupt or unsupported format): {folder / 'bad.jpg'}"
    ]
    out = Path(payload["output_dir"])
    assert _errors(result) == [
        f"error: data error: 1 of 3 input(s) could not be read (listed above and in "
        f"{out / 'predictions.json'}); the others were processed"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["im0.jpg", "im1.jpg", "predictions.json"]
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["errors"] == payload["errors"] and len(saved["results"]) == 2


def test_predict_help_documents_exit_3():
    result = dfine("predict", "--help")
    assert "exits 3" in " ".join(result.stdout.split())


def test_predict_bracketed_file_name(ckpt, in_tmp):
    image = write_jpeg(in_tmp / "photo [1].jpg")
    result = dfine("predict", ckpt, image, "--json", "--output", in_tmp / "out")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["path"] == str(image)


def test_predict_failing_early_leaves_no_run_folder(ckpt, in_tmp):
    (in_tmp / "empty").mkdir()
    _one_error(dfine("predict", ckpt, in_tmp / "empty"), 3, "no images or videos")
    _one_error(dfine("predict", ckpt, in_tmp / "nothing-here.jpg"), 3, "source not found")
    bad = in_tmp / "bad.jpg"
    bad.write_bytes(b"x")
    _one_error(dfine("predict", ckpt, bad), 3, "cannot decode image")
    assert not list((in_tmp / "runs" / "predict").glob("exp*"))
    _one_error(dfine("predict", ckpt, in_tmp / "empty", "--output", in_tmp / "given"), 3, "no images")
    assert not (in_tmp / "given").exists()


def test_predict_disk_full_is_a_file_system_error(ckpt, in_tmp, monkeypatch):
    import errno

    from dfine_cli import fileio

    write_jpeg(in_tmp / "a.jpg")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", full)
    result = dfine("predict", ckpt, in_tmp / "a.jpg", "--output", in_tmp / "out")
    _one_error(result, 8, f"file system error: no space left on device: {in_tmp / 'out' / 'a.jpg'}")
    assert not (in_tmp / "out").exists() or not list((in_tmp / "out").iterdir())


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    where.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("no mount here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_predict_into_a_read_only_folder(ckpt, tmp_path, read_only_dir):
    image = write_jpeg(tmp_path / "a.jpg")
    result = dfine("predict", ckpt, image, "--output", read_only_dir / "out")
    _one_error(result, 8, f"file system error: read-only file system: {read_only_dir / 'out'}")


def test_predict_output_is_a_file(ckpt, tmp_path):
    image = write_jpeg(tmp_path / "a.jpg")
    (tmp_path / "out").write_text("x")
    _one_error(dfine("predict", ckpt, image, "--output", tmp_path / "out"), 8, "a file, not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_where_no_file_can_be_created_is_a_file_system_error(ckpt, tmp_path):
    """``/proc`` exists but refuses new entries with ENOENT: that is about the output, not a
    missing input, so exit 8 naming the output (not exit 3 naming a temporary file)."""
    image = write_jpeg(tmp_path / "a.jpg")
    _one_error(dfine("predict", ckpt, image, "--output", "/proc/dfine-out"), 8,
               "file system error: cannot create (the location does not accept new files): /proc/dfine-out")
    _one_error(dfine("export", ckpt, "--output", "/proc/dfine.onnx", "--no-check"), 8,
               "cannot create (the location does not accept new files): /proc/dfine.onnx")


def test_broken_checkpoints_get_one_short_line(ckpt, tmp_path):
    """A truncated checkpoint and a JSON file: the cause in one sentence, not torch's advice."""
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    other = tmp_path / "meta.json"
    other.write_text('{"images": 5}')
    for path, cause in ((truncated, "is not a readable PyTorch file (truncated or corrupt?)"),
                        (other, "is not a PyTorch file (no readable pickled tensor data)")):
        result = dfine("info", path)
        _one_error(result, 4, f"not a dfine/D-FINE checkpoint: {path} {cause}")
        assert "weights_only" not in result.stderr and "miniz" not in result.stderr


# -- files that are no model ---------------------------------------------------------------------
def _not_models(folder: Path) -> dict[str, Path]:
    files = {"text.pth": b"hello\n", "empty.pth": b"", "empty.onnx": b"",
             "random.onnx": bytes(range(256)) * 8}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


@pytest.mark.parametrize("name", ["text.pth", "empty.pth", "empty.onnx", "random.onnx"])
def test_a_file_that_is_no_model_is_exit_4_everywhere(tmp_path, tmp_path_factory, name):
    from dfine_cli.data.synth import make_synthetic_dataset

    pytest.importorskip("onnxruntime")
    path = _not_models(tmp_path)[name]
    image = write_jpeg(tmp_path / "a.jpg")
    data = tmp_path_factory.mktemp("data")  # a valid dataset: eval checks --data first
    make_synthetic_dataset(data, num_images=4, num_classes=2, img_size=64)
    commands = [
        ("info", path),
        ("predict", path, image, "--output", tmp_path / "p"),
        ("eval", path, "--data", data, "--output", tmp_path / "e"),
    ]
    if name.endswith(".pth"):
        commands += [("bench", "info", path), ("weights", "convert", path, tmp_path / "o.pth"),
                     ("export", path, "--output", tmp_path / "x.onnx")]
    for args in commands:
        _one_error(dfine(*args), 4, f"model error: not a dfine/D-FINE checkpoint: {path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*_not_models(tmp_path), "a.jpg"])


# -- names files ---------------------------------------------------------------------------------
def test_names_yaml_with_python_tags_is_refused(ckpt, tmp_path):
    evil = tmp_path / "names.yaml"
    evil.write_text(f"!!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    image = write_jpeg(tmp_path / "a.jpg")
    for args in (("predict", ckpt, image, "--names", evil, "--output", tmp_path / "o"),
                 ("weights", "convert", ckpt, tmp_path / "x.pth", "--names", evil)):
        _one_error(dfine(*args), 3, f"data error: unsafe YAML: {evil} uses Python tags")
    assert not (tmp_path / "pwned").exists()


# -- the same option, the same check, in every command ------------------------------------------
def _variant_commands(ckpt: Path, tmp: Path) -> list[tuple[Any, ...]]:
    return [
        ("predict", ckpt, tmp / "a.jpg"),
        ("eval", ckpt, "--data", tmp),
        ("info", ckpt),
        ("export", ckpt),
        ("weights", "convert", ckpt, tmp / "o.pth"),
        ("bench", "info", ckpt),
    ]


def test_unknown_variant_is_a_usage_error_everywhere(ckpt, tmp_path):
    for args in _variant_commands(ckpt, tmp_path):
        result = dfine(*args, "--variant", "nope")
        assert result.exit_code == 2, (args, result.stderr)
        text = result.stderr.replace("│", " ")
        assert "'--variant'" in text and "'nope' is not one of" in " ".join(text.split())


@pytest.mark.parametrize("size", ["0", "-32", "33", "100"])
def test_img_size_outside_the_range_is_a_usage_error_everywhere(ckpt, tmp_path, size):
    write_jpeg(tmp_path / "a.jpg")
    commands = [
        ("export", ckpt, "--output", tmp_path / "x.onnx", "--no-check"),
        ("predict", ckpt, tmp_path / "a.jpg", "--output", tmp_path / "p"),
        ("eval", ckpt, "--data", tmp_path, "--output", tmp_path / "e"),
        ("weights", "convert", ckpt, tmp_path / "o.pth"),
        ("bench", "info", ckpt),
        ("bench", "latency", ckpt),
    ]
    for args in commands:
        _one_error(dfine(*args, "--img-size", size), 2,
                   f"usage error: --img-size must be a positive multiple of 32 (32, 64, 96, ..., "
                   f"640, ...), got {size}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def test_precision_flags_that_cannot_run_are_usage_errors_before_any_work(ckpt, tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    out = tmp_path / "p"
    for command in (("predict", ckpt, tmp_path / "a.jpg", "--output", out),
                    ("eval", ckpt, "--data", tmp_path, "--output", out),
                    ("viz", "report", ckpt, "--data", tmp_path, "--output", out / "r.html")):
        _one_error(dfine(*command, "--fp16", "--bf16"), 2,
                   "usage error: choose one of --fp16 and --bf16")
        _one_error(dfine(*command, "--fp16", "--device", "cpu"), 2,
                   "usage error: torch fp16 needs --device cuda; on a CPU use --bf16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def _compile_commands(weights: Path, tmp_path: Path) -> list[tuple[str | Path, ...]]:
    return [("predict", weights, tmp_path / "a.jpg", "--output", tmp_path / "p"),
            ("eval", weights, "--data", tmp_path, "--output", tmp_path / "e"),
            ("viz", "report", weights, "--data", tmp_path, "--output", tmp_path / "r.html"),
            ("bench", "latency", weights, "--iters", "1")]


def test_compile_of_an_exported_model_is_a_usage_error_before_any_work(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"never read: the choice is refused first")
    for command in _compile_commands(onnx, tmp_path):
        _one_error(dfine(*command, "--compile"), 2,
                   "usage error: --compile applies to PyTorch weights (.pth, .safetensors), not "
                   "to the onnxruntime backend")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "m.onnx"]


def test_compile_without_a_cpu_compiler_is_an_environment_error_before_any_work(
        ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    write_jpeg(tmp_path / "a.jpg")
    for command in _compile_commands(ckpt, tmp_path):
        _one_error(dfine(*command, "--compile", "--device", "cpu"), 6,
                   "--compile needs a C++ compiler for the CPU ($CXX='/nonexistent/g++' not "
                   "found)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def test_an_absent_apple_gpu_is_a_hardware_error_everywhere(ckpt, tmp_path):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    write_jpeg(tmp_path / "a.jpg")
    for command in (("predict", ckpt, tmp_path / "a.jpg", "--output", tmp_path / "p"),
                    ("eval", ckpt, "--data", tmp_path, "--output", tmp_path / "e"),
                    ("bench", "latency", ckpt, "--iters", "1")):
        _one_error(dfine(*command, "--device", "mps"), 6,
                   "hardware unavailable: device 'mps' requested but this machine has no Apple "
                   "GPU (MPS)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


# -- export: temporary files of a killed export ------------------------------------------------
def test_export_removes_temporary_files_of_a_killed_export(ckpt, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from dfine_cli import fileio

    host = fileio._owner_tag().rsplit("-", 1)[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in ("x.onnx", "y.onnx"):  # the same output, and another in the same folder
        (tmp_path / f".{name}.{host}-{dead.pid}.k1ll3d.tmp.onnx").write_bytes(b"half an onnx")
    result = dfine("export", ckpt, "--output", tmp_path / "x.onnx", "--no-check", "--no-simplify")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


def test_outputs_that_are_folders_or_below_files_fail_before_any_work(ckpt, tmp_path):
    (tmp_path / "out.onnx").mkdir()
    (tmp_path / "file").write_text("x")
    _one_error(dfine("export", ckpt, "--output", tmp_path / "out.onnx"), 8,
               f"file system error: is a directory, not a file: {tmp_path / 'out.onnx'}")
    _one_error(dfine("export", ckpt, "--output", tmp_path / "file" / "x.onnx"), 8,
               f"file system error: a part of the path is a file, not a folder: {tmp_path / 'file'}")
    (tmp_path / "report.html").mkdir()
    _one_error(dfine("viz", "report", ckpt, "--data", tmp_path, "-o", tmp_path / "report.html"), 8,
               "is a directory, not a file")
