"""Running loss and learning rate beside the epoch's progress: plain lines and the TTY bar."""

from __future__ import annotations

import io

from dfine_cli.cli import _common
from dfine_cli.engine.train_status import RunningStatus, StatusIterable


def test_running_status_text():
    status = RunningStatus()
    assert status.text() == ""
    status.update(12.345678, 0.00025)
    assert status.text() == "loss 12.3457 lr 2.50e-04"


def test_plain_lines_end_with_the_status_after_each_reported_step(monkeypatch, capsys):
    monkeypatch.setattr(_common, "stderr_is_tty", lambda: False)
    status = RunningStatus()
    seen = []
    for i in _common.track(StatusIterable(range(4), status.text), "epoch 1/3", 4):
        status.update(10.0 - i, 1e-3 * (i + 1))
        seen.append(i)
    assert seen == [0, 1, 2, 3]
    assert capsys.readouterr().err.splitlines() == [
        "epoch 1/3: 1/4 loss 10.0000 lr 1.00e-03", "epoch 1/3: 2/4 loss 9.0000 lr 2.00e-03",
        "epoch 1/3: 3/4 loss 8.0000 lr 3.00e-03", "epoch 1/3: 4/4 loss 7.0000 lr 4.00e-03",
    ]


def test_plain_iterables_keep_their_lines(monkeypatch, capsys):
    monkeypatch.setattr(_common, "stderr_is_tty", lambda: False)
    assert list(_common.track([1, 2], "eval")) == [1, 2]
    assert capsys.readouterr().err.splitlines() == ["eval: 1/2", "eval: 2/2"]


def test_tty_bar_shows_the_status(monkeypatch):
    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr(_common, "stderr_is_tty", lambda: True)
    monkeypatch.setattr(_common, "err_console",
                        lambda: Console(file=buffer, force_terminal=True, width=160, no_color=True))
    status = RunningStatus()
    for i in _common.track(StatusIterable(range(3), status.text), "epoch 2/3", 3):
        status.update(5.0 + i, 2e-4)
    assert "loss 7.0000 lr 2.00e-04" in buffer.getvalue()
