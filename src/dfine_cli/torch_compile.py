"""``--compile``: run a model through ``torch.compile`` where the target device supports it.

Off by default. On the 2-core CPU here a compiled D-FINE-N training step (640, batch 4) takes
0.70-0.77x the eager step and 0.73-0.76x its CPU time in two runs, with a lower peak RSS
(2.0-2.2 against 2.7-2.9 GiB; ``benchmarks/bench_train_step.py --compare-compile``), but
compiling costs about 3 minutes before the first step and again for every new input shape or
mode (evaluation), which short runs never win back; and it needs a compiler. What it needs:

- a device torch's inductor backend generates code for: ``cpu`` or ``cuda``;
- on the CPU, a C++ compiler (``$CXX``, else ``g++``, ``c++`` or ``clang++`` on ``PATH``);
- on CUDA, the ``triton`` package (installed with CUDA builds of torch).

:func:`check_compile_support` raises :class:`~dfine_cli.errors.DependencyError` (exit 6) with a
one-line reason otherwise. Compilation itself happens lazily at the first call; the compiled
module shares its parameters with the original, so checkpoints and EMA keep using the original.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import cast

import torch
from torch import nn

from dfine_cli.errors import DependencyError

__all__ = ["check_compile_support", "compile_module"]

_CPU_COMPILERS = ("g++", "c++", "clang++")


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use, or ``None`` if none is installed."""
    configured = os.environ.get("CXX")
    if configured:
        return shutil.which(configured)
    for name in _CPU_COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_compile_support(device: torch.device | None = None) -> None:
    """Raise if ``torch.compile`` cannot run here (on ``device``, when given).

    Raises:
        DependencyError: the device type has no inductor backend, the CPU has no C++
            compiler, or CUDA has no ``triton``.
    """
    if device is None or device.type == "cpu":
        if _cpp_compiler() is None:
            where = (
                f"$CXX={os.environ['CXX']!r} not found"
                if os.environ.get("CXX")
                else (f"none of {', '.join(_CPU_COMPILERS)} on PATH")
            )
            raise DependencyError(
                f"--compile needs a C++ compiler for the CPU ({where}); install one "
                "(e.g. apt install g++) or leave out --compile"
            )
        return
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise DependencyError(
                "--compile on CUDA needs the 'triton' package (pip install triton); "
                "or leave out --compile"
            )
        return
    raise DependencyError(
        f"--compile is not supported on device {device.type!r} (torch.compile runs on cpu "
        "and cuda); leave out --compile"
    )


def compile_module(module: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(module)`` after :func:`check_compile_support` for ``device``.

    Input sizes that change (multi-scale training, other image sizes) make torch recompile
    once with dynamic shapes; the numbers equal eager execution within float tolerance.
    """
    check_compile_support(device)
    return cast(nn.Module, torch.compile(module))
