"""``--compile``: run a model through ``torch.compile`` where the target device supports it.

Off by default. Inference (``predict``, ``eval``, ``viz``, ``bench latency``;
:meth:`dfine_cli.detector.Detector.compile_model`) goes through :func:`compile_for_inference`:
on the CPU its weights are frozen into the compiled graph (inductor's ``freezing``: constants
folded, convolution and linear weights prepacked for oneDNN once), which is what makes a
compiled forward faster than eager there. Measured here (AMD EPYC, 2 threads, batch 1, 640,
``benchmarks/bench_cpu_paths.py``): N 59.7 ms against 76.1 eager, S 147.8 against 168.8;
without freezing the compiled N forward is slower than eager (97-110 ms against 78-82).
Compiling takes 30-60 s (N) before the first image, less once inductor's on-disk cache has
the kernels.

Training (``dfine train --compile``): on the 2-core CPU here a compiled D-FINE-N training step
(640, batch 4) takes 0.70-0.77x the eager step and 0.73-0.76x its CPU time in two runs, with a
lower peak RSS (2.0-2.2 against 2.7-2.9 GiB; ``benchmarks/bench_train_step.py
--compare-compile``), but compiling costs about 3 minutes before the first step and again for
every new input shape or mode (evaluation), which short runs never win back.

What ``--compile`` needs:

- a device torch's inductor backend generates code for: ``cpu`` or ``cuda``;
- on the CPU, a C++ compiler (``$CXX``, else ``g++``, ``c++`` or ``clang++`` on ``PATH``);
- on CUDA, the ``triton`` package (installed with CUDA builds of torch).

:func:`check_compile_support` raises :class:`~dfine_cli.errors.DependencyError` (exit 6) with a
one-line reason otherwise. Compilation itself happens lazily at the first call; the compiled
module shares its parameters with the original, so checkpoints and EMA keep using the original.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from typing import cast

import torch
from torch import nn

from dfine_cli.errors import DependencyError

__all__ = ["CompiledInference", "check_compile_support", "compile_for_inference",
           "compile_module"]

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


class CompiledInference(nn.Module):
    """A deploy module (``(images, sizes) -> (labels, boxes, scores)``) compiled for inference.

    - On the CPU it is compiled with frozen weights (see the module docstring) whenever
      gradients are off, as every inference entry point runs it; the weights are then constants
      of the compiled graph, so changing ``module``'s parameters afterwards needs a new
      :func:`compile_for_inference`.
    - Shapes are static: a batch smaller than the largest one seen so far is padded with
      copies of its last image, and the padding's outputs are dropped. A dataset's last,
      partial batch so reuses the compiled graph instead of compiling another one (minutes);
      each image's outputs do not depend on the others in the batch (no training-mode layers).
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module
        self.freeze = device.type == "cpu"
        self._compiled = torch.compile(module, dynamic=False)
        self.batch_size = 0

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = images.shape[0]
        self.batch_size = max(self.batch_size, n)
        pad = self.batch_size - n
        if pad:
            images = torch.cat([images, images[-1:].expand(pad, *images.shape[1:])])
            sizes = torch.cat([sizes, sizes[-1:].expand(pad, *sizes.shape[1:])])
        elif torch.is_inference_mode_enabled() and not images.is_inference():
            # as padded inputs are: the compiled graph is specialised on the kind of tensor
            images, sizes = images.clone(), sizes.clone()
        with _frozen_weights() if self.freeze else contextlib.nullcontext():
            outputs = self._compiled(images, sizes)
        return tuple(t[:n] for t in outputs) if pad else tuple(outputs)


def _frozen_weights() -> contextlib.AbstractContextManager[object]:
    """Inductor's ``freezing`` for the compilations that happen inside (it only applies with
    gradients off). ``torch.compile(options={"freezing": True})`` does not reach the step that
    decides it, so the setting is patched around the call."""
    import torch._inductor.config as inductor_config

    return cast(contextlib.AbstractContextManager[object], inductor_config.patch(freezing=True))


def compile_for_inference(module: nn.Module, device: torch.device) -> CompiledInference:
    """``module`` (a deploy module) as :class:`CompiledInference`, after
    :func:`check_compile_support` for ``device``. Compilation happens at the first call."""
    check_compile_support(device)
    return CompiledInference(module, device)
