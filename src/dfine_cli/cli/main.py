"""The ``dfine`` application: one Typer app, every command registered explicitly below."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dfine_cli import __version__
from dfine_cli.cli import bench, data, demo, eval, export, info, predict, train, viz, weights
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks on errors (also accepted after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """D-FINE / DEIM object detection: train, evaluate, export, benchmark, predict.

    Exit codes: 0 success, 1 internal error, 2 usage,
    3 data (also: some inputs of a prediction failed), 4 model/checkpoint,
    5 export, 6 missing dependency or hardware, 7 training stopped,
    8 file system (disk full, read-only, permission denied),
    130 interrupted (Ctrl-C), 141 stdout closed by its reader,
    143 terminated (SIGTERM).
    """
    set_verbose(verbose)


# One explicit list: every command that appears in --help is finished and tested.
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("info")(info.info)
app.command("train")(train.train)
app.command("eval")(eval.evaluate)
app.command("demo")(demo.demo)
app.add_typer(weights.app, name="weights")
app.add_typer(data.app, name="data", help="Prepare, convert, check and describe datasets.")
app.add_typer(bench.app, name="bench", help="Measure model size, compute, latency and accuracy.")
app.add_typer(viz.app, name="viz", help="Look at a model's results: HTML report, FiftyOne.")


def main() -> None:
    install_sigterm_handler()
    try:
        app()
    except Terminated:  # SIGTERM outside a command (while starting up or parsing)
        sys.stderr.write("error: terminated (SIGTERM)\n")
        raise SystemExit(EXIT_TERMINATED) from None
