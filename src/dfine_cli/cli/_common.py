"""Shared plumbing for every command: error handling, output streams, JSON and progress.

Conventions every command follows:

- stdout carries results (a table, or one JSON object with ``--json``); stderr carries logs,
  progress and errors.
- A :class:`~dfine_cli.errors.DfineError` becomes one line on stderr and its category's exit
  code (see :mod:`dfine_cli.errors`); a traceback only with ``--verbose``. OS failures (disk
  full, read-only, permissions) are mapped to their category in one place, here.
- Ctrl-C exits 130 and SIGTERM 143, each with one line, after temporary files are removed.
- Rich progress bars and colours only when stderr is a terminal; ``NO_COLOR`` is respected;
  piped output gets plain, stable lines.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dfine_cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    DfineError,
    Terminated,
    classify_os_error,
)
from dfine_cli.image_size import ImageSize, parse_img_size
from dfine_cli.logs import err_console, setup_logging, stderr_is_tty

JSON_SCHEMA_VERSION = 1

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_state: dict[str, bool] = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    """Turn ``--verbose`` on or off: debug logging, and tracebacks on errors."""
    _state["verbose"] = verbose
    setup_logging(verbose)


def is_verbose() -> bool:
    return _state["verbose"]


def out_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def img_size_option(value: int | None) -> ImageSize | None:
    """``--img-size`` checked the same way in every command: ``None`` (the model's) or a
    positive multiple of 32, returned as a square ``(h, w)``."""
    return parse_img_size(value)


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as one line on stderr and return the Exit to raise."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def _category_exit(exc: DfineError) -> typer.Exit:
    if is_verbose():
        import traceback

        traceback.print_exc(file=sys.stderr)
    one_line = " ".join(str(exc).split())
    return fail(f"{exc.category}: {one_line}", exc.exit_code)


def handle_errors(func: F) -> F:
    """Turn library errors into one stderr line and the category's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # The reader of stdout went away (`| head`): nothing more can be shown, and it is
            # no error of ours. Point stdout at /dev/null so the final flush stays quiet.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except DfineError as exc:
            raise _category_exit(exc) from None
        except KeyboardInterrupt:
            raise fail("interrupted", EXIT_INTERRUPTED) from None
        except Terminated:
            raise fail("terminated (SIGTERM)", EXIT_TERMINATED) from None
        except Exception as exc:
            mapped = classify_os_error(exc)
            if mapped is not None:
                raise _category_exit(mapped) from None
            if is_verbose():
                raise
            one_line = " ".join(str(exc).split()) or type(exc).__name__
            raise fail(
                f"internal error: {type(exc).__name__}: {one_line} (rerun with --verbose for details)",
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]


_MAIN_PID: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID[0]:
        # A forked worker (data loading, multiprocessing) inherited this handler: die as usual.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def install_sigterm_handler() -> None:
    """Make SIGTERM raise :class:`~dfine_cli.errors.Terminated` in this (the main) process.

    It unwinds like Ctrl-C, so ``finally`` blocks and the temporary-file cleanup of
    :func:`dfine_cli.fileio.atomic_path` run; :func:`handle_errors` then prints one line and
    exits 143. Forked child processes that inherit the handler terminate as by default.
    """
    _MAIN_PID[:] = [os.getpid()]
    signal.signal(signal.SIGTERM, _on_sigterm)


def report_saved(path: Path | str) -> None:
    """Name the run folder (or file) a command wrote, as the last line on stderr."""
    sys.stderr.write(f"Results saved to {path}\n")
    sys.stderr.flush()


def print_json(payload: dict[str, Any]) -> None:
    """Print one JSON object with ``schema_version`` on stdout."""
    obj = {"schema_version": JSON_SCHEMA_VERSION, **payload}
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table on a terminal; tab-separated lines with a header when piped."""
    rows = [[_fmt(v) for v in row] for row in rows]
    if sys.stdout.isatty():
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        out_console().print(table)
    else:
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def track(items: Sequence[T] | Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on a TTY, or plain ``description: i/n`` lines (every 10%).

    Items that carry a ``status()`` text (:class:`dfine_cli.engine.train_status.StatusIterable`,
    e.g. the running loss and learning rate of a training epoch) have it shown beside the bar
    and at the end of each plain line.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    status: Callable[[], str] = getattr(items, "status", None) or str
    if stderr_is_tty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=err_console(),
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=total, status="")
            for item in items:
                yield item
                progress.update(task, advance=1, status=status())
        return
    step = max(1, (total or 10) // 10)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or (total is not None and done == total):
            suffix = f"/{total}" if total is not None else ""
            text = status()
            sys.stderr.write(f"{description}: {done}{suffix}{' ' + text if text else ''}\n")
            sys.stderr.flush()
