"""Device selection with clear errors when the requested hardware is absent."""

from __future__ import annotations

import torch

from dfine_cli.errors import HardwareError, UsageError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA if present else CPU; ``"cuda[:i]"`` must exist."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"invalid device {device!r} (use cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HardwareError(
                f"device {device!r} requested but no CUDA GPU is available on this machine "
                "(use --device cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HardwareError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    return dev
