"""Crash-safe file output and run-folder naming.

Nothing dfine writes is ever left half-written in place: outputs go to a temporary file in
the destination folder, are flushed and fsynced, then renamed over the target (``os.replace``
is atomic on POSIX and Windows for paths on one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not possible (nor needed) on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    The temporary file keeps ``target``'s suffix (or ``suffix``) so that writers that infer a
    format from the extension (OpenCV, ONNX tools) behave. On any exception the temporary file
    is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    keep_suffix = suffix if suffix is not None else target.suffix
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{keep_suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the output the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    target: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that atomically replaces ``target`` on close."""
    binary = "b" in mode
    with atomic_path(target) as tmp, open(
        tmp, mode, encoding=None if binary else encoding
    ) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_json(target: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON, atomically."""
    with atomic_open(target, "w") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")


def atomic_write_with(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)


def next_run_dir(command: str, name: str | None = None, root: str | os.PathLike[str] = "runs") -> Path:
    """Return a new, not yet existing ``runs/<command>/<name>`` folder and create it.

    Like Ultralytics: ``exp``, then ``exp2``, ``exp3``... (``name`` defaults to ``exp``).
    Creation uses ``mkdir(exist_ok=False)`` so two concurrent runs never share a folder.
    """
    base = name or "exp"
    parent = Path(root) / command
    parent.mkdir(parents=True, exist_ok=True)
    index = 1
    while True:
        candidate = parent / (base if index == 1 else f"{base}{index}")
        try:
            candidate.mkdir(exist_ok=False)
            return candidate
        except FileExistsError:
            index += 1
