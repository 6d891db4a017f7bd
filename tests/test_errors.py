"""OS-level failures map to their category, naming cause and path."""

from __future__ import annotations

import errno

import pytest

from dfine_cli.errors import (
    EXIT_DATA,
    EXIT_FILESYSTEM,
    DataError,
    FileSystemError,
    UsageError,
    classify_os_error,
)


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EISDIR, "is a directory, not a file"),
        (errno.ENOTDIR, "a part of the path is a file, not a folder"),
        (errno.EEXIST, "already exists"),
        (errno.EDQUOT, "disk quota exceeded"),
    ],
)
def test_os_errors_become_file_system_errors(code: int, cause: str) -> None:
    exc = OSError(code, "strerror text", "out/predictions.json")
    mapped = classify_os_error(exc)
    assert isinstance(mapped, FileSystemError) and mapped.exit_code == EXIT_FILESYSTEM
    assert str(mapped) == f"{cause}: out/predictions.json"
    assert mapped.errno == code
    assert isinstance(mapped, OSError)  # code that handles OS errors still handles it


def test_path_given_wins_and_two_paths_are_named() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/tmp/.x.tmp")
    assert str(classify_os_error(exc, path="x.pth")) == "no space left on device: x.pth"
    renamed = OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")
    assert str(classify_os_error(renamed)) == "Invalid cross-device link: a -> b"


def test_missing_file_is_a_data_error() -> None:
    mapped = classify_os_error(FileNotFoundError(errno.ENOENT, "No such file", "in.jpg"))
    assert isinstance(mapped, DataError) and mapped.exit_code == EXIT_DATA
    assert str(mapped) == "no such file or folder: in.jpg"


def test_torch_serialisation_failures_are_file_system_errors(tmp_path) -> None:
    ro = RuntimeError(
        "[enforce fail at inline_container.cc:747] . open file failed with strerror: "
        "Read-only file system"
    )
    assert str(classify_os_error(ro, path="w.pth")) == "read-only file system: w.pth"
    full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    mapped = classify_os_error(full, path=tmp_path / "w.pth")
    assert isinstance(mapped, FileSystemError)
    assert "w.pth" in str(mapped) and ("no space" in str(mapped) or "disk full" in str(mapped))
    writer = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert isinstance(classify_os_error(writer, path="w.pth"), FileSystemError)


def test_other_errors_are_not_classified() -> None:
    assert classify_os_error(RuntimeError("shape mismatch")) is None
    assert classify_os_error(ValueError("x")) is None
    assert classify_os_error(OSError("no errno")) is None
    usage = UsageError("bad")
    assert classify_os_error(usage) is usage
