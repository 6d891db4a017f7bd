"""The run-folder lock: real processes hold it, dead ones leave a stale lock that is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfine_cli.engine import run_lock
from dfine_cli.engine.run_lock import (
    LOCK_NAME,
    TOKEN_ENV,
    RunFolderInUse,
    RunLock,
    live_owner,
    read_owner,
)
from dfine_cli.engine.trainer import resolve_resume
from dfine_cli.errors import UsageError

HOLDER = """
import sys, time
from dfine_cli.engine.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("HELD", flush=True)
time.sleep(120)
"""

CHILD_VIEW = """
import sys
from dfine_cli.engine.run_lock import live_owner
owner = live_owner(sys.argv[1])
print("none" if owner is None else owner.pid, flush=True)
"""


def hold(run_dir: Path) -> subprocess.Popen[str]:
    """Start a process that takes ``run_dir``'s lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=30)


def _write_lock(run_dir: Path, **fields: object) -> None:
    data = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z",
            "token": "feedbeef", "pid_start": None}
    data.update(fields)
    (run_dir / LOCK_NAME).write_text(json.dumps(data))


def test_lock_file_names_pid_and_host_and_is_removed_on_release(tmp_path):
    with RunLock(tmp_path) as lock:
        owner = read_owner(tmp_path)
        assert owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname()
        assert lock.owner == owner
        assert live_owner(tmp_path) is None  # this process's own lock is not "another" process
    assert not (tmp_path / LOCK_NAME).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary files left either


def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt), RunLock(tmp_path):
        raise KeyboardInterrupt
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_process_is_refused_then_takes_over_after_the_holder_is_killed(tmp_path):
    proc = hold(tmp_path)
    try:
        with pytest.raises(RunFolderInUse, match=rf"pid {proc.pid} on host {socket.gethostname()}") as info:
            RunLock(tmp_path).acquire()
        assert info.value.exit_code == 2 and str(tmp_path) in str(info.value)
        owner = live_owner(tmp_path)
        assert owner is not None and owner.pid == proc.pid
    finally:
        _stop(proc)
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL: the holder could not clean up
    assert live_owner(tmp_path) is None  # ... but its lock is stale
    with RunLock(tmp_path) as lock:
        assert read_owner(tmp_path) == lock.owner


def test_sigterm_leaves_no_live_lock(tmp_path):
    proc = hold(tmp_path)
    _stop(proc, signal.SIGTERM)
    assert live_owner(tmp_path) is None
    RunLock(tmp_path).acquire().release()


def test_zombie_holder_counts_as_gone(tmp_path):
    proc = hold(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").exists() and "Z" not in Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1][:3]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        assert live_owner(tmp_path) is None  # exited but not yet reaped
    finally:
        proc.wait()


def test_stale_locks_are_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, pid=int(dead.stdout))
    RunLock(tmp_path).acquire().release()
    # A lock naming this very pid but another process start time: the pid was reused.
    _write_lock(tmp_path, pid=os.getpid(), pid_start="1")
    if run_lock._process_start(os.getpid()) is not None:
        RunLock(tmp_path).acquire().release()
    (tmp_path / LOCK_NAME).write_text("{ not json")
    RunLock(tmp_path).acquire().release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_respected(tmp_path):
    _write_lock(tmp_path, host="some-other-host", pid=1)
    with pytest.raises(RunFolderInUse, match="pid 1 on host some-other-host"):
        RunLock(tmp_path).acquire()
    assert read_owner(tmp_path).token == "feedbeef"  # untouched


def test_workers_see_the_launchers_lock_as_their_own(tmp_path):
    with RunLock(tmp_path) as lock:
        outside = subprocess.run([sys.executable, "-c", CHILD_VIEW, str(tmp_path)], capture_output=True,
                                 text=True, env={k: v for k, v in os.environ.items() if k != TOKEN_ENV})
        assert outside.stdout.strip() == str(os.getpid())
        with lock.shared_with_children():
            inside = subprocess.run([sys.executable, "-c", CHILD_VIEW, str(tmp_path)], capture_output=True,
                                    text=True)
        assert inside.stdout.strip() == "none"
        assert TOKEN_ENV not in os.environ
        # A second acquire in the same process (the worker of a launcher) is a no-op.
        again = RunLock(tmp_path).acquire()
        assert again.owner is None
        again.release()
        assert (tmp_path / LOCK_NAME).exists()


def _run_with_last(root: Path, name: str, mtime: float) -> Path:
    run = root / "runs" / "train" / name
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"x")
    os.utime(run / "last.pth", (mtime, mtime))
    return run


def test_resume_auto_skips_live_runs_and_resume_dir_names_the_pid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = _run_with_last(tmp_path, "exp", 1_000_000)
    new = _run_with_last(tmp_path, "exp2", 2_000_000)
    assert resolve_resume("auto") == Path("runs/train/exp2/last.pth")
    proc = hold(new)
    try:
        assert resolve_resume("auto") == Path("runs/train/exp/last.pth")
        with pytest.raises(RunFolderInUse, match=f"pid {proc.pid}"):
            resolve_resume(str(new))
        with pytest.raises(RunFolderInUse, match=f"pid {proc.pid}"):
            resolve_resume(str(new / "last.pth"))
        second = hold(old)
        try:
            with pytest.raises(UsageError, match=r"every run with a last\.pth is training"):
                resolve_resume("auto")
        finally:
            _stop(second)
    finally:
        _stop(proc)
    assert resolve_resume("auto") == Path("runs/train/exp2/last.pth")  # stale lock: resumable
