"""Crash-safe file output and run-folder naming.

Nothing dfine writes is ever left half-written in place: outputs go to a temporary file in
the destination folder, are flushed and fsynced, then renamed over the target (``os.replace``
is atomic on POSIX and Windows for paths on one filesystem). OS failures while writing (disk
full, read-only file system, permissions) become :class:`~dfine_cli.errors.FileSystemError`
naming the target. Temporary names carry the host and process id so that a later run can
remove what a killed process left behind (:func:`remove_stale_temps`).

Run folders (``runs/<command>/expN``) that end up empty because the command failed before
writing anything are removed again (:func:`run_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

from dfine_cli.errors import DataError, DfineError, FileSystemError, classify_os_error


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
    (and any folder created for it that is still empty) is removed and ``target`` is untouched;
    OS failures are raised as :class:`~dfine_cli.errors.FileSystemError` naming ``target``.
    """
    target = Path(target)
    keep_suffix = suffix if suffix is not None else target.suffix
    created = _missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{_owner_tag()}.", suffix=f".tmp{keep_suffix}",
            dir=target.parent,
        )
    except OSError as exc:
        _raise_write_error(exc, target, creating=True)
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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _remove_empty(created)
        if isinstance(exc, (OSError, RuntimeError)):
            _raise_write_error(exc, target, tmp)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _owner_tag() -> str:
    """``<host>-<pid>``: who writes a temporary file (dots and dashes in the host removed)."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum())[:32] or "host"
    return f"{host}-{os.getpid()}"


def _raise_write_error(exc: BaseException, target: Path, tmp: Path | None = None, *,
                       creating: bool = False) -> NoReturn:
    """Raise an OS failure while writing ``target`` as a FileSystemError naming the file.

    That is ``target`` unless the error names another file than the temporary one (a writer
    reading an input, say). Errors that are not OS failures are raised unchanged, and so is
    ``FileNotFoundError`` (a missing input, mapped where it is reported), except while
    ``creating`` the output's folder or temporary file: there nothing but the output is
    involved (e.g. a folder under ``/proc``), so it is a file system error naming ``target``.
    """
    if creating and isinstance(exc, FileNotFoundError):
        raise FileSystemError(f"cannot create (the location does not accept new files): {target}",
                              errno.ENOENT) from exc
    if isinstance(exc, (DfineError, FileNotFoundError)):
        raise exc
    named = getattr(exc, "filename", None)
    own = named is None or (tmp is not None and Path(os.fsdecode(named)) == tmp)
    mapped = classify_os_error(exc, path=target if own else None)
    if mapped is None:
        raise exc
    raise mapped from exc


def check_output_file(target: str | os.PathLike[str]) -> None:
    """Fail early, before any work, when ``target`` cannot become a file: it is a folder, or
    a part of its path is a file. Raises the :class:`FileSystemError` writing it would."""
    target = Path(target)
    if target.is_dir():
        raise FileSystemError(f"is a directory, not a file: {target}", errno.EISDIR)
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileSystemError(
                    f"a part of the path is a file, not a folder: {parent}", errno.ENOTDIR
                )
            return


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)\.[a-z0-9_]+\.tmp")


def remove_stale_temps(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove temporary files in ``folder`` left by processes of this host that are gone.

    A process killed while writing (SIGKILL, power loss) cannot remove its temporary file;
    the next write into the same folder calls this. Only files named as :func:`atomic_path`
    names them are considered (``name``: only those standing in for that file name), and
    those of live processes (a concurrent writer) and of other hosts are kept. Returns the
    files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _owner_tag().rsplit("-", 1)[0]
    removed = []
    pattern = f".{glob.escape(name)}.*.tmp*" if name is not None else ".*.tmp*"
    for candidate in sorted(folder.glob(pattern)):
        match = _TEMP_NAME.match(candidate.name)
        if (
            match is None
            or (name is not None and match["name"] != name)
            or match["host"] != host
            or _pid_alive(int(match["pid"]))
        ):
            continue
        with contextlib.suppress(OSError):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)  # a multi-file writer's folder (temp_dir_beside)
            else:
                candidate.unlink()
            removed.append(candidate)
    return removed


def temp_dir_beside(target: str | os.PathLike[str]) -> Path:
    """Create a private temporary folder next to ``target`` for a writer of several files.

    It is named like :func:`atomic_path`'s temporary files, so :func:`remove_stale_temps`
    removes it when the process that made it was killed. The caller moves its results into
    place and removes the folder.
    """
    target = Path(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".tmp",
                                 dir=target.parent))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":
        return True  # Windows: os.kill would terminate the process, so never probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


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
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_write_error(exc, parent, creating=True)
    index = 1
    while True:
        candidate = parent / (base if index == 1 else f"{base}{index}")
        try:
            candidate.mkdir(exist_ok=False)
            return candidate
        except FileExistsError:
            index += 1
        except OSError as exc:
            _raise_write_error(exc, candidate, creating=True)


@contextlib.contextmanager
def run_dir(
    command: str, output: str | os.PathLike[str] | None = None, name: str | None = None,
    root: str | os.PathLike[str] = "runs",
) -> Iterator[Path]:
    """The output folder of one command run; removed again if the run fails leaving it empty.

    ``output`` is used as given (created if missing); otherwise the next numbered
    ``runs/<command>/expN`` is created. If the body raises (any exception, Ctrl-C, SIGTERM)
    and the folder holds nothing, a folder this call created is removed, so failed runs
    leave no empty folders behind; a folder holding results is always kept.
    """
    if output is not None:
        folder = Path(output)
        if folder.exists() and not folder.is_dir():
            raise FileSystemError(f"a file, not a folder: {folder}", errno.ENOTDIR)
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _raise_write_error(exc, folder, creating=True)
    else:
        folder, created = next_run_dir(command, name, root), True
    try:
        yield folder
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        raise


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML (or JSON) file with ``yaml.safe_load``; one-line :class:`DataError`s.

    A file using Python tags (``!!python/object/apply:...``, which an unsafe loader would
    execute) is refused as "unsafe YAML"; any other syntax error names the file and line.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        tag = str(getattr(exc, "problem", "") or "")
        if "python/" in tag or "python/" in str(exc):
            raise DataError(
                f"unsafe YAML: {path} uses Python tags ({_yaml_mark(exc)}), which could run "
                "code; only plain YAML (lists, mappings, strings, numbers) is read"
            ) from exc
        raise DataError(f"invalid YAML in {path}: {' '.join(tag.split())} ({_yaml_mark(exc)})") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"invalid YAML in {path}: {' '.join(str(exc).split())}") from exc


def _yaml_mark(exc: Any) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "unknown position"

