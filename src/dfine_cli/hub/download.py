"""Downloading weights into the cache: verified, atomic, once per job.

A download streams into a temporary file beside its cache path (progress on stderr: a rich bar
on a terminal, plain lines when piped), is checked (byte count, sha256 when the table knows one,
and a strict load into the model the table names), and only then renamed into place. A
``<file>.verified`` note beside it records size and sha256, so later uses skip the load check;
a file without that note (placed by hand, or left by another tool) is verified on first use and
deleted if it fails, so that the next call downloads it again.

Failures are :class:`~dfine_cli.errors.DependencyError` (exit 6), in one line naming the URL
and the exact path where the file can be placed by hand.

Under ``torch.distributed`` (``torchrun``), the process with local rank 0 on each machine
downloads while the others wait; every process then sees the same outcome.

Plain :mod:`urllib` is used rather than ``requests`` or ``torch.hub``: it is enough for one GET
per file, handles ``file://`` mirrors, adds no dependency, and leaves the temporary-file,
verification and error handling (which ``torch.hub.download_url_to_file`` does differently)
entirely to this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfine_cli.errors import CheckpointError, DependencyError, DfineError
from dfine_cli.hub.registry import WeightsEntry

log = logging.getLogger("dfine.hub")

CHUNK = 1 << 20  # bytes per read
TIMEOUT_S = 60.0  # per socket operation, not for the whole file
VERIFIED_SUFFIX = ".verified"

Verifier = Callable[[Path], None]


# --------------------------------------------------------------------------- progress


class _Progress:
    """Bytes received so far: a rich bar on a terminal, a plain line every 10% otherwise."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self._next_report = 0.1
        self._bar: Any = None
        if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True, highlight=False), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(f"downloading {label}", total=total)
        else:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            sys.stderr.write(f"downloading {label}{size}\n")
            sys.stderr.flush()

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        if self.total and self.done / self.total >= self._next_report:
            pct = int(100 * self.done / self.total)
            sys.stderr.write(f"downloading {self.label}: {pct}% "
                             f"({self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB)\n")
            sys.stderr.flush()
            self._next_report = (pct // 10 + 1) / 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------- transfer


def _failure(entry_label: str, url: str, dest: Path, reason: str, hint: str) -> DependencyError:
    extra = f"; {hint}" if hint else ""
    return DependencyError(
        f"could not download {entry_label} from {url} ({reason}); place the file by hand at "
        f"{dest}{extra}"
    )


def _transfer(url: str, tmp: Path, label: str) -> tuple[int, str]:
    """GET ``url`` into ``tmp``; returns (bytes, sha256 hex). Raises OSError-like errors."""
    request = urllib.request.Request(url, headers={"User-Agent": "dfine"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        progress = _Progress(label, total)
        try:
            with open(tmp, "wb") as fh:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.advance(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            progress.close()
    if total is not None and received != total:
        raise http.client.IncompleteRead(b"", total - received)
    return received, digest.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"server answered HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach the server: {exc.reason}"
    if isinstance(exc, http.client.IncompleteRead):
        return f"transfer ended early, {exc.expected} byte(s) missing" if exc.expected else "transfer ended early"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _note_path(dest: Path) -> Path:
    return dest.with_name(dest.name + VERIFIED_SUFFIX)


def _write_note(dest: Path, url: str, size: int, sha256: str) -> None:
    from dfine_cli.fileio import write_json

    write_json(_note_path(dest), {"url": url, "size": size, "sha256": sha256})


def _note_matches(dest: Path, sha256: str | None) -> bool:
    """True if the ``.verified`` note fits the file's size (and the expected sha256)."""
    note = _note_path(dest)
    try:
        data = json.loads(note.read_text(encoding="utf-8"))
        if sha256 is not None and str(data["sha256"]) != sha256.lower():
            return False
        return int(data["size"]) == dest.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check(path: Path, sha256: str | None, expected: str | None, verify: Verifier) -> None:
    """Raise CheckpointError if ``path`` fails the sha256 or the load check."""
    if expected is not None and sha256 != expected.lower():
        raise CheckpointError(f"sha256 {sha256} differs from the expected {expected}")
    verify(path)


def download_file(url: str, dest: Path, *, label: str, verify: Verifier,
                  sha256: str | None = None, hint: str = "") -> Path:
    """Make sure a verified copy of ``url`` is at ``dest``; download it if needed.

    Args:
        url: where the file is (``http(s)://`` or ``file://``).
        dest: its cache path.
        label: the name used in messages (e.g. ``dfine-s-coco``).
        verify: raises :class:`CheckpointError` if a file is not what the table promises.
        sha256: expected hex digest, when known.
        hint: appended to failure messages (e.g. ``or train with --no-pretrained``).
    """
    if dest.is_file():
        if _note_matches(dest, sha256):
            return dest
        try:
            _check(dest, _sha256_of(dest) if sha256 else None, sha256, verify)
        except CheckpointError as exc:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise DependencyError(
                f"the cached file {dest} for {label} is not valid ({exc}); it has been deleted, "
                "run the command again to download it again"
            ) from exc
        _write_note(dest, url, dest.stat().st_size, _sha256_of(dest))
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise _failure(label, url, dest, f"cannot write to the cache: {_reason(exc)}", hint) from exc
    tmp = Path(tmp_name)
    try:
        try:
            size, digest = _transfer(url, tmp, label)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _failure(label, url, dest, _reason(exc), hint) from exc
        try:
            _check(tmp, digest, sha256, verify)
        except CheckpointError as exc:
            raise DependencyError(
                f"the file downloaded from {url} is not a valid {label} ({exc}); it was deleted, "
                f"run the command again to retry, or place a good copy by hand at {dest}"
            ) from exc
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _write_note(dest, url, size, digest)
    log.info("downloaded %s -> %s", label, dest)
    return dest


# --------------------------------------------------------------------------- verification


def verify_entry(entry: WeightsEntry, path: Path) -> None:
    """Strictly load ``path`` into the model (or backbone) ``entry`` names."""
    if entry.kind == "backbone":
        from dfine_cli.hub.pretrained import (
            build_backbone_for,
            load_backbone_weights,
            read_backbone_state,
        )

        load_backbone_weights(build_backbone_for(entry), read_backbone_state(path), source=str(path))
        return
    from dfine_cli.checkpoints import load_weights, read_checkpoint
    from dfine_cli.models.build import build_model_from_config

    ckpt = read_checkpoint(path, variant=entry.variant)
    cfg = ckpt.info.config
    if cfg.name != entry.size or cfg.num_classes != entry.num_classes:
        raise CheckpointError(
            f"it holds a D-FINE-{cfg.name.upper()} with {cfg.num_classes} classes, not the "
            f"D-FINE-{(entry.size or '?').upper()} with {entry.num_classes} classes of {entry.name}"
        )
    load_weights(build_model_from_config(cfg), ckpt.state_dict, source=str(path))


# --------------------------------------------------------------------------- one job, many processes


def _distributed_world() -> int:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return 1
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def fetch_entry(entry: WeightsEntry, hint: str = "") -> Path:
    """The cached, verified file of ``entry``, downloaded first if needed.

    In a ``torch.distributed`` job with several processes every process must call this for
    the same entry: local rank 0 of each machine downloads, the others wait, and all raise the
    same error if it failed.
    """
    dest = entry.cache_path()

    def run() -> Path:
        return download_file(entry.url, dest, label=entry.name, sha256=entry.sha256,
                             verify=lambda p: verify_entry(entry, p), hint=hint)

    if _distributed_world() <= 1:
        return run()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    error: str | None = None
    if local_rank == 0:
        try:
            run()
        except DfineError as exc:
            error = str(exc)
    outcomes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, error)  # also the barrier the other processes wait at
    failed = next((e for e in outcomes if e), None)
    if failed is not None:
        raise DependencyError(failed)
    if not dest.is_file():
        raise _failure(entry.name, entry.url, dest, "not present on this machine after the "
                       "download by local rank 0", hint)
    return dest
