"""The options every command shares, written once: one name, type, short flag, default and help
text per concept. Commands annotate their parameters with these types, so ``--device`` means
the same (and defaults to ``auto``) in ``predict``, ``eval``, ``viz`` and ``bench``.

Shape of every command: WEIGHTS first, then SOURCE or ``--data``; ``-o/--output`` where the
command writes a file or folder; ``--json`` for one JSON object on stdout; ``-v/--verbose``
before or after the sub-command. Defaults that depend on the model (``--img-size``) or on the
settings file (``train``) are shown in ``--help`` with a ``show_default`` text.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dfine_cli.backends import BACKENDS
from dfine_cli.cli._common import set_verbose
from dfine_cli.detector_options import DEFAULT_CONF
from dfine_cli.devices import DEFAULT_DEVICE, DEVICE_OPTION_HELP, parse_device
from dfine_cli.errors import UsageError
from dfine_cli.models.presets import VARIANTS

BackendChoice = Enum(  # type: ignore[misc]
    "BackendChoice", {name: name for name in ("auto", *BACKENDS)}, type=str
)
"""``auto`` (by the weights file's extension) or one of the inference backends."""
BACKEND_DEFAULT = BackendChoice("auto")

VariantChoice = Enum("VariantChoice", {name: name for name in VARIANTS}, type=str)  # type: ignore[misc]
"""The decoder variants (``dfine``, ``deim``)."""


def _verbose(value: bool) -> None:
    if value:
        set_verbose(True)


#: ``-v/--verbose`` on every command, so it also works after the sub-command. The root
#: ``dfine -v`` sets the same flag.
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Debug logging and full tracebacks on errors.",
        callback=_verbose, is_eager=True, expose_value=False,
    ),
]

def parse_device_option(value: str | None) -> str | None:
    """``--device`` checked once, while parsing: a bad spelling is a usage error (exit 2);
    whether the hardware exists is checked when the device is used."""
    if value is None:
        return None
    try:
        return parse_device(value)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


Device = Annotated[
    str, typer.Option("--device", help=DEVICE_OPTION_HELP, callback=parse_device_option)
]
DEVICE_DEFAULT = DEFAULT_DEVICE

Conf = Annotated[
    float,
    typer.Option(
        "--conf", min=0.0, max=1.0,
        help="Minimum score of a detection that is kept (drawn, saved, counted). The default "
        "is the official D-FINE inference scripts' threshold and the demo's, the same in "
        "every command.",
    ),
]
CONF_DEFAULT = DEFAULT_CONF

ImgSize = Annotated[
    int | None,
    typer.Option(
        "--img-size", help="Network input side in pixels, a positive multiple of 32.",
        show_default="the model's",
    ),
]

Variant = Annotated[
    VariantChoice | None,
    typer.Option(
        "--variant", help="Decoder variant of an official .pth file (dfine or deim).",
        show_default="read from the file",
    ),
]

Backend = Annotated[
    BackendChoice,
    typer.Option("--backend", help="Inference backend; auto picks it by the weights file's extension."),
]

Data = Annotated[
    Path, typer.Option("--data", help="Dataset folder (COCO layout) or dataset YAML.")
]
OptionalData = Annotated[
    Path | None, typer.Option("--data", help="Dataset folder (COCO layout) or dataset YAML.")
]

Split = Annotated[str, typer.Option("--split", help="Split of --data.")]

BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]

Threads = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads for inference.", show_default="torch's"),
]

MaxImages = Annotated[
    int | None,
    typer.Option("--max-images", min=1, help="Only the first N images of the split.",
                 show_default="all"),
]

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]

Compile = Annotated[bool, typer.Option(
    "--compile/--no-compile", help="Run a PyTorch model through torch.compile (on a CPU with "
    "its weights frozen into the graph: faster than eager; needs a C++ compiler, cuda needs "
    "triton; compiles at the first batch).")]
Fp16 = Annotated[bool, typer.Option(
    "--fp16", help="Run in float16: torch on CUDA (autocast), OpenVINO where the CPU has it.")]
Bf16 = Annotated[bool, typer.Option(
    "--bf16", help="Run in bfloat16: torch (autocast, on CUDA or a CPU) or OpenVINO (CPUs with "
    "bf16); an INT8 OpenVINO IR runs its float parts in it.")]


def precision_option(fp16: bool, bf16: bool) -> str:
    """``--fp16``/``--bf16`` -> ``fp16``, ``bf16`` or ``fp32`` (neither given)."""
    if fp16 and bf16:
        raise UsageError("choose one of --fp16 and --bf16")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def output_option(what: str, default: str) -> object:
    """``-o/--output`` for a command that writes ``what``; ``default`` is shown in --help."""
    return typer.Option("--output", "-o", help=f"{what}.", show_default=default)


RunFolderOutput = Annotated[
    Path | None, output_option("Run folder to write (created)", "runs/<command>/exp{N}")
]

WeightsPath = Annotated[
    Path,
    typer.Argument(
        metavar="WEIGHTS",
        help="Checkpoint (.pth, transformers folder/.safetensors, a name from 'dfine weights "
        "list'), or an exported .onnx / .xml / .engine.",
    ),
]

__all__ = [
    "BACKEND_DEFAULT",
    "CONF_DEFAULT",
    "DEVICE_DEFAULT",
    "Backend",
    "BackendChoice",
    "BatchSize",
    "Conf",
    "Data",
    "Device",
    "ImgSize",
    "Json",
    "MaxImages",
    "OptionalData",
    "RunFolderOutput",
    "Split",
    "Threads",
    "Variant",
    "VariantChoice",
    "Verbose",
    "WeightsPath",
    "output_option",
    "parse_device_option",
]
