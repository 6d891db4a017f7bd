"""A loopback weights server for the download tests (no test touches the internet)."""

from __future__ import annotations

import pytest

from tests.hub.weights_server import serve


@pytest.fixture
def server(monkeypatch, tmp_path):
    with serve() as srv:
        monkeypatch.setenv("DFINE_WEIGHTS_URL", srv.base)
        monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
        yield srv
