"""Crash-safe writes: OS failures named, temporary files and empty run folders never left."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfine_cli import fileio
from dfine_cli.errors import DataError, FileSystemError
from dfine_cli.fileio import (
    atomic_open,
    atomic_path,
    check_output_file,
    next_run_dir,
    read_yaml,
    remove_stale_temps,
    run_dir,
    write_json,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mount_tmpfs(where: Path, options: str) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (skips where mounting is not allowed)."""
    where = tmp_path / "small"
    if not _mount_tmpfs(where, "size=64k"):
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (skips where mounting is not allowed)."""
    where = tmp_path / "ro"
    if not _mount_tmpfs(where, "size=64k,ro"):
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


# -- OS failures while writing -----------------------------------------------------------------
def test_disk_full_during_a_write_names_cause_and_target(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "predictions.json"
    target.parent.mkdir()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", full)
    with pytest.raises(FileSystemError, match=r"^no space left on device: .*predictions\.json$"):
        write_json(target, {"a": 1})
    assert _leftovers(target.parent) == []  # temporary file removed


def test_permission_denied_names_the_target(tmp_path: Path, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", args[-1] if args else None)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", denied)
    with pytest.raises(FileSystemError, match="permission denied"):
        write_json(tmp_path / "x.json", {})


def test_output_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "x.json").mkdir()
    with pytest.raises(FileSystemError, match=r"is a directory, not a file: .*x\.json"):
        write_json(tmp_path / "x.json", {})
    assert _leftovers(tmp_path) == ["x.json"]


def test_output_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileSystemError) as info:
        write_json(tmp_path / "file" / "x.json", {})
    assert info.value.errno in (errno.EEXIST, errno.ENOTDIR) and "file" in str(info.value)


def test_torch_save_on_a_full_disk_is_a_file_system_error(tmp_path: Path, monkeypatch) -> None:
    import torch

    from dfine_cli.checkpoints import save_payload

    def fails(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(FileSystemError, match=r"last\.pth"):
        save_payload(tmp_path / "last.pth", {"a": 1})
    assert _leftovers(tmp_path) == []


def test_real_full_disk(small_disk: Path) -> None:
    import torch

    from dfine_cli.checkpoints import save_payload

    with (
        pytest.raises(FileSystemError, match=r"^no space left on device: .*big\.bin$"),
        atomic_open(small_disk / "big.bin", "wb") as fh,
    ):
        fh.write(b"x" * (256 << 10))
    with pytest.raises(FileSystemError, match=r"no space left on device: .*w\.pth"):
        save_payload(small_disk / "w.pth", {"w": torch.zeros(100_000)})
    assert _leftovers(small_disk) == []


def test_real_read_only_folder(read_only_dir: Path) -> None:
    with pytest.raises(FileSystemError, match="read-only file system"):
        write_json(read_only_dir / "x.json", {})
    with pytest.raises(FileSystemError, match="read-only file system"):
        next_run_dir("predict", root=read_only_dir / "runs")


def test_errors_of_the_writer_itself_pass_through(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mine"), atomic_path(tmp_path / "x.bin"):
        raise ValueError("mine")
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.bin"):
        open(tmp_path / "missing-input.txt").close()
    assert _leftovers(tmp_path) == []


def test_failed_write_removes_the_folders_it_created(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a" / "b" / "x.onnx"):
        raise RuntimeError("export failed")
    assert _leftovers(tmp_path) == []


# -- temporary files of killed writers ---------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    host = fileio._owner_tag().rsplit("-", 1)[0]
    dead = tmp_path / f".model.onnx.{host}-{_dead_pid()}.abc123_x.tmp.onnx"
    live = tmp_path / f".model.onnx.{host}-{os.getppid()}.def456.tmp.onnx"
    other_host = tmp_path / ".model.onnx.elsewhere-1.ghi789.tmp.onnx"
    other_target = tmp_path / f".other.v2.onnx.{host}-{_dead_pid()}.jkl.tmp.onnx"
    not_ours = tmp_path / ".notes.tmp"
    for path in (dead, live, other_host, other_target, not_ours):
        path.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path, name="model.onnx") == [dead]
    assert remove_stale_temps(tmp_path) == [other_target]
    assert _leftovers(tmp_path) == sorted(p.name for p in (live, other_host, not_ours))
    assert remove_stale_temps(tmp_path / "missing") == []


def test_temporary_names_carry_host_and_pid(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "x.pth") as tmp:
        assert tmp.name.startswith(f".x.pth.{fileio._owner_tag()}.")
        assert remove_stale_temps(tmp_path) == []  # our own, in progress
        tmp.write_bytes(b"data")
    assert _leftovers(tmp_path) == ["x.pth"]


def test_a_killed_writer_leaves_a_temp_the_next_write_removes(tmp_path: Path) -> None:
    code = (
        "import os, signal\n"
        "from dfine_cli.fileio import atomic_open\n"
        f"with atomic_open({str(tmp_path / 'w.json')!r}) as fh:\n"
        "    fh.write('{')\n"
        "    fh.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert len(list(tmp_path.glob(".w.json.*.tmp*"))) == 1
    assert len(remove_stale_temps(tmp_path, name="w.json")) == 1
    assert _leftovers(tmp_path) == []


# -- run folders -------------------------------------------------------------------------------
def test_run_dir_removes_an_empty_folder_on_failure(tmp_path: Path) -> None:
    with pytest.raises(DataError), run_dir("predict", root=tmp_path / "runs") as folder:
        assert folder == tmp_path / "runs" / "predict" / "exp"
        raise DataError("no images")
    assert _leftovers(tmp_path / "runs" / "predict") == []
    with pytest.raises(KeyboardInterrupt), run_dir("predict", output=tmp_path / "given"):
        raise KeyboardInterrupt
    assert not (tmp_path / "given").exists()


def test_run_dir_keeps_results_and_existing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError), run_dir("eval", root=tmp_path / "runs") as folder:
        (folder / "metrics.json").write_text("{}")
        raise DataError("late failure")
    assert _leftovers(tmp_path / "runs" / "eval" / "exp") == ["metrics.json"]
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError), run_dir("eval", output=tmp_path / "mine"):
        raise DataError("x")
    assert (tmp_path / "mine").is_dir()
    with run_dir("eval", root=tmp_path / "runs") as second:
        pass
    assert second.name == "exp2" and second.is_dir()


def test_run_dir_output_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with (
        pytest.raises(FileSystemError, match="a file, not a folder"),
        run_dir("predict", output=tmp_path / "out"),
    ):
        pass


# -- YAML --------------------------------------------------------------------------------------
def test_yaml_with_python_tags_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "names.yaml"
    evil.write_text(f"!!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    with pytest.raises(DataError, match=r"^unsafe YAML: .*names\.yaml uses Python tags \(line 1\)"):
        read_yaml(evil)
    assert not (tmp_path / "pwned").exists()
    nested = tmp_path / "data.yaml"
    nested.write_text("names:\n  - !!python/name:os.system\n")
    with pytest.raises(DataError, match="unsafe YAML"):
        read_yaml(nested)


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("names: [a, b\n")
    with pytest.raises(DataError, match=r"invalid YAML in .*bad\.yaml"):
        read_yaml(bad)
    with pytest.raises(DataError, match="file not found"):
        read_yaml(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("names: [a, b]\n")
    assert read_yaml(good) == {"names": ["a", "b"]}


def test_check_output_file_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileSystemError, match=r"^is a directory, not a file: .*folder\.onnx$"):
        check_output_file(tmp_path / "folder.onnx")
    with pytest.raises(FileSystemError, match=r"^a part of the path is a file, not a folder: .*file$"):
        check_output_file(tmp_path / "file" / "sub" / "x.onnx")
    check_output_file(tmp_path / "new" / "x.onnx")  # missing folders are created when writing
    check_output_file(tmp_path / "file")  # an existing file is replaced
    assert not (tmp_path / "new").exists()


def test_a_killed_multi_file_writers_temp_folder_is_removed(tmp_path):
    """temp_dir_beside folders (OpenVINO IR export) are cleaned like temporary files."""

    from dfine_cli.fileio import remove_stale_temps, temp_dir_beside

    code = ("import sys, time; from dfine_cli.fileio import temp_dir_beside; "
            "d = temp_dir_beside(sys.argv[1]); (d / 'model.bin').write_bytes(b'x'); "
            "print(d, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "model.xml")],
                            stdout=subprocess.PIPE, text=True)
    folder = Path(proc.stdout.readline().strip())
    assert folder.is_dir()
    mine = temp_dir_beside(tmp_path / "model.xml")  # a live writer's folder is kept
    assert remove_stale_temps(tmp_path, "model.xml") == []
    proc.kill()
    proc.wait()
    assert remove_stale_temps(tmp_path, "model.xml") == [folder]
    assert not folder.exists() and mine.is_dir()
