"""Where the ``dfine`` logger writes: stderr, rich on a terminal, plain stable lines when piped.

One setup used by the command line and by every training worker process (a worker started
by torchrun configures its own logging, with its rank in the prefix under ``--verbose``).
Colour follows rich, which turns it off when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console


def stderr_is_tty() -> bool:
    """True when stderr is an interactive terminal (and not ``TERM=dumb``)."""
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def err_console() -> Console:
    """A rich console on stderr; rich disables colour itself when ``NO_COLOR`` is set."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def setup_logging(verbose: bool = False) -> None:
    """Send the ``dfine`` logger to stderr: rich on a terminal, ``LEVEL message`` lines otherwise.

    ``verbose`` lowers the level to DEBUG and, in a torchrun worker (``RANK`` set), prefixes
    plain lines with ``[rank N]``. Calling it again replaces the previous handler.
    """
    logger = logging.getLogger("dfine")
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler: logging.Handler
    if stderr_is_tty():
        from rich.logging import RichHandler

        handler = RichHandler(console=err_console(), show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _CurrentStderrHandler()
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if (verbose and rank is not None) else ""
        handler.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(message)s"))
    logger.addHandler(handler)


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (it may be replaced, e.g. in tests)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass
