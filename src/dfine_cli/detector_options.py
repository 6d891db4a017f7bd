"""How a command opens the detector it runs: backend, device, threads, input size, class names,
and the score threshold.

``predict``, ``eval`` and ``viz`` take the same choices about a model; :func:`open_detector`
applies them in one place, so an ``--img-size`` that an exported model cannot take or a
``--names`` file with too few names fails the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dfine_cli.devices import DEFAULT_DEVICE
from dfine_cli.errors import DataError, UsageError
from dfine_cli.image_size import ImageSize

if TYPE_CHECKING:  # imported when a detector is opened: the CLI starts without torch
    from dfine_cli.detector import Detector

#: The score a detection needs to be kept unless told otherwise (``Detector.predict``, every
#: command's ``--conf``, the demo): the threshold the official D-FINE inference scripts draw
#: at. D-FINE's scores run lower than YOLO's, and 0.5 drops most true boxes of a briefly
#: trained model (the demo's).
DEFAULT_CONF = 0.4


@dataclass(frozen=True)
class DetectorOptions:
    """The user's choices about the model a command runs.

    ``backend`` is ``auto`` (by the weights file's extension) or a backend name; ``device``
    a device name (``auto``, ``cpu``, ``cuda:N``; see :mod:`dfine_cli.devices`); ``variant``
    the decoder variant of an official ``.pth`` (``None``: read from the file); ``threads``
    CPU threads for inference (``None``: the library's default); ``compile`` runs a PyTorch
    model through ``torch.compile``; ``precision`` the inference precision (``fp32``,
    ``bf16``, ``fp16``; see :meth:`Detector.load`); ``img_size`` the network
    input ``(h, w)`` in pixels (``None``: the model's); ``names`` a class-names value as
    :func:`dfine_cli.data.convert.parse_names` reads it (``None``: the model's names).
    """

    backend: str = "auto"
    device: str = DEFAULT_DEVICE
    variant: str | None = None
    threads: int | None = None
    img_size: ImageSize | None = None
    names: str | Path | None = None
    compile: bool = False  # run a PyTorch model through torch.compile (Detector.compile_model)
    precision: str = "fp32"


def check_options(weights: str | Path, options: DetectorOptions | None) -> None:
    """Fail at once on choices that cannot run together (a backend that does not run the
    precision asked for, torch fp16 on a CPU, ``--compile`` of an exported model or where
    ``torch.compile`` cannot run), before a dataset or the model is read."""
    from dfine_cli.backends import choose_backend

    options = options or DetectorOptions()
    backend = choose_backend(Path(weights), options.backend, options.precision, options.device)
    if options.compile:
        check_compile_options(backend, options.device)


def check_compile_options(backend: str, device: str) -> None:
    """``--compile`` needs PyTorch weights, and ``torch.compile`` support on ``device``."""
    if backend != "torch":
        raise UsageError(f"--compile applies to PyTorch weights (.pth, .safetensors), not to "
                         f"the {backend} backend")
    from dfine_cli.devices import resolve_device
    from dfine_cli.torch_compile import check_compile_support

    check_compile_support(resolve_device(device))


def open_detector(weights: str | Path, options: DetectorOptions | None = None) -> Detector:
    """Load ``weights`` as :class:`~dfine_cli.detector.Detector` with ``options`` applied.

    Raises :class:`UsageError` when an exported model (fixed input size) is asked for another
    size, and :class:`DataError` when a names file has fewer names than the model has classes.
    """
    from dfine_cli.allocator import keep_freed_memory
    from dfine_cli.detector import Detector

    options = options or DetectorOptions()
    check_options(weights, options)  # before the file is read
    keep_freed_memory()  # a command's process: freed feature maps are reused, not faulted in
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    detector = Detector.load(weights, backend=options.backend, device=options.device,
                             variant=options.variant, threads=options.threads,
                             precision=options.precision)
    if options.compile:
        detector.compile_model()
    if options.img_size is not None:
        size = tuple(options.img_size)
        if detector.model is None and tuple(detector.img_size) != size:
            raise UsageError(f"this exported model has a fixed input size {tuple(detector.img_size)}; "
                             "re-export it for another --img-size")
        detector.backend.meta.img_size = (size[0], size[1])
    if options.names is not None:
        from dfine_cli.data.convert import parse_names

        names = parse_names(options.names) or []
        if detector.model is not None and len(names) < len(detector.class_names):
            raise DataError(f"{options.names} has {len(names)} names; the model has "
                            f"{len(detector.class_names)} classes")
        detector.backend.meta.class_names = names
    return detector
