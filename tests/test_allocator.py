"""dfine_cli.allocator: glibc's malloc keeps freed tensor memory for reuse, unless told not to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfine_cli import allocator
from tests.helpers import tiny_checkpoint


class _FakeLibc:
    """A C library whose ``mallopt`` records its calls (a plain function: ctypes sets
    ``argtypes`` and ``restype`` on it)."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return self.result

        self.mallopt = mallopt


@pytest.fixture
def fake_libc(monkeypatch: pytest.MonkeyPatch) -> _FakeLibc:
    libc = _FakeLibc()
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    return libc


def test_sets_both_thresholds_once(fake_libc: _FakeLibc) -> None:
    assert allocator.keep_freed_memory({}) == "set"
    assert fake_libc.calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert allocator.keep_freed_memory({}) == "set"
    assert len(fake_libc.calls) == 2  # once per process


@pytest.mark.parametrize(("environ", "reason"), [
    ({"DFINE_MALLOC": "default"}, "DFINE_MALLOC=default"),
    ({"DFINE_MALLOC": "OFF"}, "DFINE_MALLOC=off"),
    ({"DFINE_MALLOC": "jemalloc"}, "unknown DFINE_MALLOC=jemalloc"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
    ({"MALLOC_TRIM_THRESHOLD_": "1"}, "MALLOC_TRIM_THRESHOLD_ is set"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "jemalloc is preloaded"),
])
def test_leaves_malloc_alone_where_the_user_chose(
    fake_libc: _FakeLibc, environ: dict[str, str], reason: str
) -> None:
    assert allocator.keep_freed_memory(environ).startswith("left as is: ")
    assert reason in allocator.keep_freed_memory(environ)
    assert fake_libc.calls == []


def test_dfine_turns_it_on_explicitly(fake_libc: _FakeLibc) -> None:
    assert allocator.keep_freed_memory({"DFINE_MALLOC": "dfine"}) == "set"


def test_other_tunables_and_other_platforms(fake_libc: _FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    # tunables of something else than malloc do not count
    assert allocator.keep_freed_memory({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}) == "set"
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory({}) == "left as is: not glibc (darwin)"


def test_a_refused_value_is_reported(fake_libc: _FakeLibc) -> None:
    fake_libc.result = 0
    assert allocator.keep_freed_memory({}) == "left as is: mallopt refused the thresholds"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_real_mallopt_accepts_the_thresholds() -> None:
    code = ("import os; os.environ.pop('DFINE_MALLOC', None); from dfine_cli import allocator; "
            "print(allocator.keep_freed_memory({}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("set", "left as is: no mallopt in this C library")


def test_the_inference_commands_set_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import dfine_cli.bench.latency
    from dfine_cli.cli import bench, main
    from dfine_cli.detector_options import open_detector
    from dfine_cli.errors import UsageError

    called: list[str] = []

    def record() -> str:
        called.append("set")
        return "set"

    monkeypatch.setattr(allocator, "keep_freed_memory", record)
    open_detector(tiny_checkpoint(tmp_path / "tiny.pth"))  # predict, eval, viz open theirs here
    assert called == ["set"]

    def stop(*args: object, **kwargs: object) -> None:
        raise UsageError("stopped before measuring")

    monkeypatch.setattr(bench, "keep_freed_memory", record)
    monkeypatch.setattr(dfine_cli.bench.latency, "run_latency", stop)
    result = CliRunner().invoke(main.app, ["bench", "latency", "n"])
    assert result.exit_code == 2 and called == ["set", "set"]
