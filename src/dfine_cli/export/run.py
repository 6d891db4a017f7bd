"""``dfine export`` as one call: check which options apply to the format, load the checkpoint,
pick the output path and run the format's exporter.

Formats: ``onnx`` (:mod:`dfine_cli.export.onnx`), ``openvino`` (IR ``.xml`` + ``.bin``, FP32 or
INT8; :mod:`dfine_cli.export.openvino_ir`) and ``engine`` (TensorRT;
:mod:`dfine_cli.export.tensorrt`). Every option that does not apply to the chosen format is
a usage error naming it, raised before anything is loaded or written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfine_cli.errors import UsageError
from dfine_cli.fileio import check_output_file, remove_stale_temps
from dfine_cli.image_size import ImageSize

#: The export formats, with the suffix of the file each writes.
EXPORT_FORMATS: dict[str, str] = {"onnx": ".onnx", "engine": ".engine", "openvino": ".xml"}
#: Images that calibrate OpenVINO INT8 unless told otherwise.
DEFAULT_CALIB_IMAGES = 300
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how; the fields a format does not use must keep their defaults.

    ONNX and OpenVINO: ``opset``, ``dynamic_batch`` (a dynamic batch axis N), ``simplify``
    (ONNX only: onnxslim). Engine: ``fp16``, ``workspace_gb`` (TensorRT workspace limit in
    GB), the batch profile ``min_batch <= opt_batch <= max_batch``, ``keep_fp32`` (module
    path globs kept in FP32 under ``fp16``). OpenVINO: ``int8`` with ``calib_images`` images
    of ``data``. ``img_size`` is the network input ``(h, w)`` (``None``: the checkpoint's).
    """

    format: str = "onnx"
    output: Path | None = None
    img_size: ImageSize | None = None
    variant: str | None = None
    check: bool = True
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    simplify: bool = True
    fp16: bool = False
    workspace_gb: float | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    keep_fp32: Sequence[str] = field(default_factory=tuple)
    int8: bool = False
    calib_images: int | None = None
    data: Path | None = None
    int8_scope: str | None = None


def check_export_options(source: Path, options: ExportOptions) -> None:
    """Raise :class:`UsageError` naming every given option that ``options.format`` does not use."""
    fmt = options.format
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; one of {', '.join(EXPORT_FORMATS)}")
    int8_options = {"--int8": options.int8, "--calib-images": options.calib_images is not None,
                    "--data": options.data is not None}
    if options.int8_scope is not None:
        if fmt != "openvino":
            raise UsageError("--int8-scope applies to --format openvino only")
        if not options.int8:
            raise UsageError("--int8-scope applies with --int8 only")
        from dfine_cli.export.int8 import scope_patterns

        scope_patterns(options.int8_scope, "--int8-scope")
    if fmt == "onnx" and (used := [flag for flag, given in int8_options.items() if given]):
        raise UsageError(f"{', '.join(used)} apply to --format openvino or engine only")
    if fmt == "engine":
        onnx_only = {"--opset": options.opset != DEFAULT_OPSET,
                     "--static-batch": not options.dynamic_batch,
                     "--no-simplify": not options.simplify}
        if used := [flag for flag, given in onnx_only.items() if given]:
            raise UsageError(f"{', '.join(used)} apply to --format onnx only (engines are built "
                             "from opset-17 ONNX with a dynamic batch bounded by the profile)")
        if any(int8_options.values()):
            from dfine_cli.export.tensorrt_int8 import check_int8_engine_options

            check_int8_engine_options(source, int8=options.int8, data=options.data,
                                      calib_images=options.calib_images, fp16=options.fp16,
                                      keep_fp32=options.keep_fp32)
        return
    engine_only = {"--fp16": options.fp16, "--workspace": options.workspace_gb is not None,
                   "--min-batch": options.min_batch is not None,
                   "--opt-batch": options.opt_batch is not None,
                   "--max-batch": options.max_batch is not None,
                   "--keep-fp32": bool(options.keep_fp32)}
    if used := [flag for flag, given in engine_only.items() if given]:
        raise UsageError(f"{', '.join(used)} apply to --format engine only")
    if source.suffix.lower() == ".onnx":
        raise UsageError(f"{source.name} is already ONNX; --format engine builds a TensorRT engine from it")
    if fmt == "openvino":
        if not options.simplify:
            raise UsageError("--no-simplify applies to --format onnx only")
        if not options.int8 and (options.calib_images is not None or options.data is not None):
            raise UsageError("--calib-images and --data apply with --int8 only")
        if options.int8 and options.data is None:
            raise UsageError("--int8 needs calibration images: --data DIR")


def output_path(source: Path, options: ExportOptions) -> Path:
    """``options.output``, or the source's path with the format's suffix."""
    out = Path(options.output) if options.output else source.with_suffix(EXPORT_FORMATS[options.format])
    if options.format == "openvino" and out.suffix.lower() != ".xml":
        raise UsageError(f"--format openvino writes an .xml (+ .bin); got --output {out.name}")
    return out


def export_weights(source: str | Path, options: ExportOptions) -> Any:
    """Export ``source`` (a checkpoint in any supported format, or an ``.onnx`` for an engine).

    Returns the format's report: :class:`~dfine_cli.export.onnx.ExportReport` for ONNX and
    OpenVINO, :class:`~dfine_cli.export.tensorrt.EngineReport` for an engine. The output is
    written atomically; temporary files a killed export left in its folder are removed first.
    """
    from dfine_cli.checkpoints import load_model  # here: `dfine --help` starts without torch

    source = Path(source)
    check_export_options(source, options)
    out = output_path(source, options)
    check_output_file(out)
    if options.format == "openvino":
        check_output_file(out.with_suffix(".bin"))
    remove_stale_temps(out.parent)  # left in this folder by a killed export
    if options.format == "engine" and options.int8:
        from dfine_cli.export.int8 import calibration_images
        from dfine_cli.export.tensorrt_int8 import export_int8_engine

        assert options.data is not None  # checked above
        images = calibration_images(options.data, options.calib_images or DEFAULT_CALIB_IMAGES)
        model, info = load_model(source, options.variant)
        return export_int8_engine(model, info, out, images, source=source, img_size=options.img_size,
                                  min_batch=options.min_batch,
                                  opt_batch=options.opt_batch, max_batch=options.max_batch,
                                  workspace_gb=options.workspace_gb)
    if options.format == "engine":
        from dfine_cli.export.tensorrt import export_engine, export_engine_from_onnx

        engine: dict[str, Any] = {
            "fp16": options.fp16, "workspace_gb": options.workspace_gb,
            "min_batch": options.min_batch, "opt_batch": options.opt_batch,
            "max_batch": options.max_batch, "img_size": options.img_size, "check": options.check,
        }
        if options.keep_fp32 and source.suffix.lower() == ".onnx":
            raise UsageError("--keep-fp32 applies when dfine exports the ONNX from a checkpoint")
        if options.keep_fp32 and not options.fp16:
            raise UsageError("--keep-fp32 names layers to keep in FP32 in an --fp16 engine")
        if source.suffix.lower() == ".onnx":
            return export_engine_from_onnx(source, out, **engine)
        model, info = load_model(source, options.variant)
        return export_engine(model, info, out, keep_fp32=list(options.keep_fp32), source=source,
                             **engine)
    model, info = load_model(source, options.variant)
    size = options.img_size or info.img_size
    if options.format == "openvino":
        from dfine_cli.export.openvino_ir import Int8Options, export_openvino

        int8 = None
        if options.int8:
            from dfine_cli.export.int8 import DEFAULT_SCOPE, calibration_images

            assert options.data is not None  # checked above
            count = options.calib_images or DEFAULT_CALIB_IMAGES
            int8 = Int8Options(calibration_images(options.data, count), subset_size=count,
                               scope=options.int8_scope or DEFAULT_SCOPE)
        return export_openvino(model, info, out, img_size=size, opset=options.opset,
                               dynamic_batch=options.dynamic_batch, check=options.check, int8=int8)
    from dfine_cli.export.onnx import export_onnx

    return export_onnx(model, info, out, img_size=size, opset=options.opset,
                       dynamic_batch=options.dynamic_batch, simplify=options.simplify,
                       check=options.check)
