"""Keep freed CPU tensor memory for reuse (glibc ``malloc``): fewer page faults per step.

PyTorch's CPU tensors come from ``malloc``. glibc serves every request above its mmap
threshold (128 KiB, raised by itself up to 32 MiB as large blocks are freed) with fresh pages
from the kernel, and gives the free space at the top of its heap back to the kernel once it
exceeds the trim threshold. A detector's feature maps are megabytes each and freed within the
same forward, so a forward can fault its maps in again every time, and the kernel zeroes each
page first. Measured on two CPU cores (``python benchmarks/bench_allocator.py``, fused
channels-last deploy module, batch 1, 640): D-FINE-N had about 8,000 page faults and 16 ms of
system time per forward; with this setting none, and 0.83x the latency (S: 0.95x).

:func:`keep_freed_memory` sets the mmap threshold to glibc's maximum (32 MiB) and the trim
threshold to 1 GiB, so blocks up to 32 MiB come from the heap and freed ones are reused.
The peak resident memory of inference stays the same (the same tensors are alive at the
peak); up to 1 GiB of freed memory stays with the process instead of going back to the
system between uses. The commands that run a detector call it (``predict``,
``eval``, ``viz``, ``bench latency``, ``bench compare``, through
:func:`~dfine_cli.detector_options.open_detector` or directly); Python users may call it
themselves. Training sets it too (``Trainer.setup``): a channels-last training step of N at
batch 4 had a third of the page faults, 0.96-0.97x the step time and the same peak RSS.

Nothing happens where the allocator is not glibc's (macOS, Windows, musl), where another
allocator is preloaded (jemalloc, tcmalloc, mimalloc: they reuse memory already), or where the
user set glibc's malloc tunables (``GLIBC_TUNABLES``, ``MALLOC_*_``) or ``DFINE_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping

#: ``mallopt`` parameters (glibc ``<malloc.h>``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept before it is given back to the system.
TRIM_THRESHOLD = 1 << 30
#: Environment variable that turns the setting off (``DFINE_MALLOC=default``; ``dfine``, or
#: unset, keeps it on; any other value leaves malloc as it is, with a warning).
ENV_VAR = "DFINE_MALLOC"
_OFF = ("default", "off", "0", "false", "no")
#: Allocators that replace ``malloc`` when preloaded; they keep freed memory already.
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_")

log = logging.getLogger("dfine")

_state: str | None = None


def _reason_to_leave(environ: Mapping[str, str]) -> str | None:
    choice = environ.get(ENV_VAR, "").strip().lower()
    if choice in _OFF:
        return f"{ENV_VAR}={choice}"
    if choice not in ("", "dfine"):
        log.warning("%s=%s is not a known value (dfine, or default/off); malloc left as is",
                    ENV_VAR, environ[ENV_VAR])
        return f"unknown {ENV_VAR}={environ[ENV_VAR]}"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets malloc tunables"
    named = [name for name in _USER_TUNABLES if name in environ]
    if named:
        return f"{named[0]} is set"
    preload = environ.get("LD_PRELOAD", "")
    for name in _OTHER_ALLOCATORS:
        if name in preload:
            return f"{name} is preloaded"
    if not sys.platform.startswith("linux"):
        return f"not glibc ({sys.platform})"
    return None


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> str:
    """Set glibc's malloc to keep freed blocks for reuse (once per process; see the module).

    Returns what happened, for logs: ``"set"``, or ``"left as is: <reason>"``.
    """
    global _state
    if _state is not None:
        return _state
    reason = _reason_to_leave(os.environ if environ is None else environ)
    if reason is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            reason = "no mallopt in this C library"
        else:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            # mallopt returns 1 on success, 0 on a refused value
            if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
                reason = "mallopt refused the thresholds"
    _state = "set" if reason is None else f"left as is: {reason}"
    log.debug("malloc: %s", _state)
    return _state


__all__ = ["ENV_VAR", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]
