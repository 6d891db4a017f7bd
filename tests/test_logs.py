"""The dfine logger: plain `LEVEL message` lines on a piped stderr, rank-prefixed in workers."""

from __future__ import annotations

import logging

from dfine_cli.logs import setup_logging


def test_plain_lines_when_piped(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    setup_logging(verbose=False)
    logging.getLogger("dfine.test").info("hello")
    logging.getLogger("dfine.test").debug("hidden")
    assert capsys.readouterr().err == "INFO hello\n"


def test_verbose_workers_name_their_rank(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    setup_logging(verbose=True)
    logging.getLogger("dfine.test").debug("step")
    assert capsys.readouterr().err == "[rank 3] DEBUG step\n"
    setup_logging(verbose=False)
