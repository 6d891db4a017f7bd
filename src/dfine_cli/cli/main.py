"""The ``dfine`` application: one Typer app, sub-commands registered explicitly."""

from __future__ import annotations

import sys

import typer

from dfine_cli import __version__
from dfine_cli.cli._common import install_sigterm_handler, set_verbose
from dfine_cli.errors import EXIT_TERMINATED, Terminated

app = typer.Typer(
    name="dfine",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dfine {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging and full tracebacks on errors."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """D-FINE / DEIM object detection: train, evaluate, export, benchmark, predict.

    Exit codes: 0 success, 1 internal error, 2 usage, 3 data (also: some inputs of a
    prediction failed), 4 model/checkpoint, 5 export, 6 missing dependency or hardware,
    7 training stopped, 8 file system (disk full, read-only, permission denied),
    130 interrupted (Ctrl-C), 141 stdout closed by its reader, 143 terminated (SIGTERM).
    """
    set_verbose(verbose)


def _register() -> None:
    # One explicit list: every command that appears in --help is finished and tested.
    from dfine_cli.cli import commands_core

    commands_core.register(app)
    # -- sub-applications --
    from dfine_cli.cli.data import app as data_app

    app.add_typer(data_app, name="data", help="Prepare, convert, check and describe datasets.")
    from dfine_cli.cli.bench import app as bench_app

    app.add_typer(bench_app, name="bench", help="Measure model size, compute, latency and accuracy.")
    from dfine_cli.cli.viz import app as viz_app

    app.add_typer(viz_app, name="viz", help="Look at a model's results: HTML report, FiftyOne.")


_register()


def main() -> None:
    install_sigterm_handler()
    try:
        app()
    except Terminated:  # SIGTERM outside a command (while starting up or parsing)
        sys.stderr.write("error: terminated (SIGTERM)\n")
        raise SystemExit(EXIT_TERMINATED) from None
