"""One training process per run folder: a lock file naming the owner's pid and host.

A process that trains in a run folder holds ``<run>/.train.lock``, a small JSON file
``{"pid", "host", "started", "token", "pid_start"}``. It is created atomically (written to
a temporary file, then hard-linked to its name, which fails if a lock already exists), so a
reader never sees a half-written lock and two processes can never both hold one.

A lock is *stale*, and the next process takes it over, when its owner ran on this host and
that process is gone: no such pid, a zombie, or a pid that now belongs to a younger process
(``pid_start``, the owner's start time from ``/proc``, guards against pid reuse after a
restart of the machine or container). A lock of another host is always taken as live: its
pid cannot be checked from here.

Under multi-process training the process that launches the workers holds the lock and hands
its token to them in the environment (:data:`TOKEN_ENV`); a worker sees that lock as its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dfine_cli.errors import UsageError

LOCK_NAME = ".train.lock"
#: Environment variable through which a launcher hands the token of its lock to its workers.
TOKEN_ENV = "DFINE_RUN_LOCK_TOKEN"

_HELD: set[str] = set()  # tokens of the locks this process holds


@dataclass(frozen=True)
class LockOwner:
    """Who holds a run folder's lock."""

    pid: int
    host: str
    started: str  # UTC, ISO 8601
    token: str
    pid_start: str | None = None  # the owner's start time in clock ticks since boot (Linux)

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.started})"


class RunFolderInUse(UsageError):
    """Another live process trains in the run folder."""

    def __init__(self, run_dir: Path, owner: LockOwner) -> None:
        super().__init__(
            f"run folder {run_dir} is in use: {owner.describe()} is training in it; wait for it "
            f"to finish or stop it (a lock whose process is gone is taken over automatically)"
        )
        self.run_dir = run_dir
        self.owner = owner


def lock_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / LOCK_NAME


def _stat_fields(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or [] where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rfind(")") + 2 :].split()


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` (field 22 of ``/proc/<pid>/stat``), or None where unknown."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return _process_state(pid) not in ("Z", "X")  # a zombie has exited


def owner_alive(owner: LockOwner) -> bool:
    """False when the owner certainly exited (same host, its pid is gone or reused)."""
    if owner.host != socket.gethostname():
        return True
    if not _pid_alive(owner.pid):
        return False
    if owner.pid_start is not None:
        current = _process_start(owner.pid)
        if current is not None and current != owner.pid_start:
            return False
    return True


def _parse(raw: str) -> LockOwner | None:
    try:
        data = json.loads(raw)
        return LockOwner(int(data["pid"]), str(data["host"]), str(data["started"]),
                         str(data["token"]), data.get("pid_start"))
    except (ValueError, KeyError, TypeError):
        return None


def read_owner(run_dir: str | os.PathLike[str]) -> LockOwner | None:
    """The lock's owner; None without a lock. An unreadable lock reads as a stale owner."""
    try:
        raw = lock_path(run_dir).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        raw = ""
    # Locks are written atomically, so garbage is not a lock being written: it is stale.
    return _parse(raw) or LockOwner(0, socket.gethostname(), "unknown", "", None)


def is_ours(owner: LockOwner) -> bool:
    """True for a lock this process holds or that its launcher holds on its behalf."""
    return owner.token != "" and (owner.token in _HELD or owner.token == os.environ.get(TOKEN_ENV))


def live_owner(run_dir: str | os.PathLike[str]) -> LockOwner | None:
    """The owner of ``run_dir``'s lock if another live process holds it, else None."""
    owner = read_owner(run_dir)
    if owner is None or is_ours(owner) or not owner_alive(owner):
        return None
    return owner


def _new_owner() -> LockOwner:
    pid = os.getpid()
    return LockOwner(pid=pid, host=socket.gethostname(),
                     started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     token=secrets.token_hex(8), pid_start=_process_start(pid))


class RunLock:
    """The lock of one run folder (the folder must exist). Use as a context manager.

    :meth:`acquire` raises :class:`RunFolderInUse` (a usage error, exit 2) when another live
    process holds the lock, takes over a stale one, and is a no-op when the lock is already
    this process's or its launcher's.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.owner: LockOwner | None = None  # set while this object holds the lock

    @property
    def path(self) -> Path:
        return lock_path(self.run_dir)

    def acquire(self) -> RunLock:
        owner = _new_owner()
        payload = json.dumps(asdict(owner)) + "\n"
        for _ in range(20):
            fd, tmp_name = tempfile.mkstemp(prefix=f"{LOCK_NAME}.", suffix=".tmp", dir=self.run_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp_name, self.path)
            except FileExistsError:
                pass
            else:
                self.owner = owner
                _HELD.add(owner.token)
                return self
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
            current = read_owner(self.run_dir)
            if current is None:
                continue  # released meanwhile
            if is_ours(current):
                return self  # held by this process or for it by its launcher
            if owner_alive(current):
                raise RunFolderInUse(self.run_dir, current)
            self._take_over(current)
        raise UsageError(f"could not lock run folder {self.run_dir}: its lock keeps changing")

    def _take_over(self, stale: LockOwner) -> None:
        """Remove a stale lock unless another process replaced it in the meantime."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)  # atomic: only one process moves a given file
        except FileNotFoundError:
            return
        try:
            moved = _parse(aside.read_text(encoding="utf-8"))
        except OSError:
            moved = None
        if moved is not None and moved.token != stale.token:
            # A live lock appeared between our read and the rename: put it back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this object still holds it."""
        if self.owner is None:
            return
        current = read_owner(self.run_dir)
        if current is not None and current.token == self.owner.token:
            self.path.unlink(missing_ok=True)
        _HELD.discard(self.owner.token)
        self.owner = None

    @contextlib.contextmanager
    def shared_with_children(self) -> Iterator[None]:
        """Let processes started inside this block (the workers) see the lock as theirs."""
        token = self.owner.token if self.owner else None
        previous = os.environ.get(TOKEN_ENV)
        if token is not None:
            os.environ[TOKEN_ENV] = token
        try:
            yield
        finally:
            if token is not None:
                if previous is None:
                    os.environ.pop(TOKEN_ENV, None)
                else:
                    os.environ[TOKEN_ENV] = previous

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

