"""benchmarks/bench_allocator.py: both malloc settings measured in fresh processes."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import load_benchmark


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_round_measures_both_settings(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("bench_allocator")
    argv = ["--sizes", "n", "--img-size", "320", "--iters", "2", "--warmup", "1", "--rounds", "1",
            "--threads", "1"]
    assert bench.main(argv) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    runs = {row[1]: row for row in rows if row[1] in ("A", "B")}
    assert set(runs) == {"A", "B"}
    for row in runs.values():
        faults, sys_ms, ms, rss = (float(v) for v in row[3:7])
        assert faults >= 0 and sys_ms >= 0 and ms > 0 and rss > 0
    assert rows[-1][:2] == ["n", "A/B time"] and float(rows[-1][5]) > 0


def test_the_child_reports_which_setting_it_ran(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dfine_cli import allocator

    bench = load_benchmark("bench_allocator")
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("DFINE_MALLOC", "default")  # B: glibc's own
    argv = ["--child", "n", "--img-size", "320", "--iters", "1", "--warmup", "0", "--threads", "1"]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["malloc"] == "left as is: DFINE_MALLOC=default"
    assert report["ms"] > 0
