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
130    interrupted (Ctrl-C)
=====  ==========================================================================
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_EXPORT = 5
EXIT_ENVIRONMENT = 6
EXIT_TRAINING = 7
EXIT_INTERRUPTED = 130


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
