"""Error categories and the exit codes the command line maps them to.

Every failure a user can cause or meet is raised as a :class:`DfineError` subclass with a
one-line message. The CLI prints that line to stderr and exits with the category's code; a
traceback is shown only with ``--verbose``.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      success
1      unexpected internal error (a bug: please report it with ``--verbose``)
2      usage error: bad flags, bad option values, unknown config keys
3      data error: missing/corrupt images, videos, annotation files, datasets
4      model or checkpoint error: unreadable, unsafe or mismatching weights
5      export error: an export failed or its output disagrees with torch
6      missing dependency or hardware: an optional package, CUDA or a GPU is absent
7      training stopped: repeated non-finite losses or a failed distributed peer
8      file system: no space left, read-only file system, permission denied, a path
       that is a folder where a file is needed (or the reverse)
130    interrupted (Ctrl-C)
141    stdout closed by its reader (``dfine weights list | head``): stops quietly
143    terminated (SIGTERM): handled like Ctrl-C, temporary files removed
=====  ==========================================================================

A command that processes many inputs (``dfine predict``) keeps going past bad ones, saves
the results of the good ones and exits 3 at the end if any input failed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_EXPORT = 5
EXIT_ENVIRONMENT = 6
EXIT_TRAINING = 7
EXIT_FILESYSTEM = 8
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a closed pipe


class DfineError(Exception):
    """Base class: a failure with a one-line, user-facing message."""

    exit_code: int = EXIT_INTERNAL
    category: str = "error"


class UsageError(DfineError):
    """Invalid arguments or configuration values."""

    exit_code = EXIT_USAGE
    category = "usage error"


class DataError(DfineError):
    """An input image, video, annotation file or dataset is missing or malformed."""

    exit_code = EXIT_DATA
    category = "data error"


class CheckpointError(DfineError):
    """A checkpoint or model file cannot be read, is unsafe, or does not fit the model."""

    exit_code = EXIT_MODEL
    category = "model error"


class ExportError(DfineError):
    """An export failed, or the exported model disagrees with the torch model."""

    exit_code = EXIT_EXPORT
    category = "export error"


class DependencyError(DfineError):
    """An optional dependency, CUDA, or a GPU the command needs is not available."""

    exit_code = EXIT_ENVIRONMENT
    category = "missing dependency"


class HardwareError(DependencyError):
    """The requested device (e.g. ``cuda``) is not present on this machine."""

    category = "hardware unavailable"


class TrainingError(DfineError):
    """Training cannot continue (non-finite losses, failed distributed peer)."""

    exit_code = EXIT_TRAINING
    category = "training stopped"


class FileSystemError(DfineError, OSError):
    """The operating system refused a file operation: disk full, read-only, permissions...

    Also an :class:`OSError` (with the original ``errno``), so code that handles OS errors
    keeps handling it.
    """

    exit_code = EXIT_FILESYSTEM
    category = "file system error"

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code  # type: ignore[misc]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Terminated(BaseException):
    """Raised in the main process when it receives SIGTERM (handled like Ctrl-C)."""


# errno -> the cause as a user reads it; everything else falls back to strerror.
_OS_REASONS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}


def classify_os_error(
    exc: BaseException, path: str | os.PathLike[str] | None = None
) -> DfineError | None:
    """The :class:`DfineError` an OS-level failure maps to, naming cause and path; else None.

    ``FileNotFoundError`` is a :class:`DataError` (a missing input); every other ``OSError``
    with an ``errno`` is a :class:`FileSystemError`. Torch's serialisation failures (the
    ``inline_container.cc`` / ``PytorchStreamWriter`` errors it raises when a disk fills up
    during ``torch.save``) are file system errors too. ``path`` names the file when the
    exception does not (or names only a temporary file standing in for ``path``).
    """
    if isinstance(exc, DfineError):
        return exc
    where = str(path) if path is not None else None
    if isinstance(exc, OSError) and exc.errno is not None:
        where = where or _os_error_paths(exc)
        suffix = f": {where}" if where else ""
        if exc.errno == errno.ENOENT:
            return DataError(f"no such file or folder{suffix}")
        reason = _OS_REASONS.get(exc.errno) or exc.strerror or os.strerror(exc.errno)
        return FileSystemError(f"{reason}{suffix}", exc.errno)
    text = str(exc)
    if isinstance(exc, RuntimeError) and (
        "inline_container.cc" in text or "PytorchStreamWriter" in text
    ):
        return _torch_write_failure(text, where)
    return None


def _os_error_paths(exc: OSError) -> str | None:
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return " -> ".join(os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in names) or None


def _torch_write_failure(text: str, where: str | None) -> FileSystemError:
    suffix = f": {where}" if where else ""
    marker = "strerror: "
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()[0].lower()
        return FileSystemError(f"{reason}{suffix}")
    if where is not None and _nearly_full(Path(where).parent):
        return FileSystemError(f"no space left on device{suffix}", errno.ENOSPC)
    first = " ".join(text.split())[:160]
    return FileSystemError(f"write failed (disk full or I/O error?){suffix} ({first})")


def _nearly_full(folder: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(folder).free < 16 << 20  # under 16 MiB left
    except OSError:
        return False


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise :class:`DependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"the '{module}' package is required for this; install it with: "
            f"pip install 'dfine[{extra}]'  ({exc})"
        ) from exc
