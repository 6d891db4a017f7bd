"""``dfine export``: ONNX, OpenVINO IR or a TensorRT engine, checked against the model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, print_table
from dfine_cli.cli.options import ImgSize, Json, OptionalData, Variant, Verbose, output_option
from dfine_cli.export.run import DEFAULT_CALIB_IMAGES, DEFAULT_OPSET, EXPORT_FORMATS

ExportFormat = Enum("ExportFormat", {name: name for name in EXPORT_FORMATS}, type=str)  # type: ignore[misc]


@handle_errors
def export(
    weights: Annotated[Path, typer.Argument(metavar="WEIGHTS", help="Checkpoint to export (any supported format), or an .onnx for --format engine.")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx, engine (TensorRT), or openvino (IR .xml + .bin).")] = ExportFormat("onnx"),
    output: Annotated[Path | None, output_option("File to write", "next to WEIGHTS, .onnx / .engine / .xml")] = None,
    img_size: ImgSize = None,
    opset: Annotated[int, typer.Option("--opset", min=16, help="ONNX opset.")] = DEFAULT_OPSET,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static-batch", help="Dynamic batch axis N.")] = True,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify the graph (onnxslim).")] = True,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare the export with torch / ONNX Runtime.")] = True,
    variant: Variant = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Engine: FP16 (network in float16, postprocessor in float32).")] = False,
    workspace: Annotated[float | None, typer.Option("--workspace", min=0.0, help="Engine: TensorRT workspace limit in GB.", show_default="TensorRT's")] = None,
    min_batch: Annotated[int | None, typer.Option("--min-batch", min=1, help="Engine: smallest batch of the optimisation profile.", show_default="1")] = None,
    opt_batch: Annotated[int | None, typer.Option("--opt-batch", min=1, help="Engine: batch TensorRT tunes for.", show_default="min batch")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", min=1, help="Engine: largest batch of the profile.", show_default="opt batch")] = None,
    keep_fp32: Annotated[list[str] | None, typer.Option("--keep-fp32", help="Engine with --fp16: module path (glob) to keep in FP32, e.g. 'decoder.dec_bbox_head.*'; repeatable.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="OpenVINO or engine: INT8 post-training quantization (OpenVINO: NNCF; engine: entropy-calibrated Q/DQ), calibrated on --data images.")] = False,
    calib_images: Annotated[int | None, typer.Option("--calib-images", min=1, help="--int8: number of calibration images.", show_default=str(DEFAULT_CALIB_IMAGES))] = None,
    int8_scope: Annotated[str | None, typer.Option("--int8-scope", help="OpenVINO --int8: the parts left in floating point: fpn (default, chosen by measurement; docs/deploy.md), none, sampling, heads, sampling+heads or decoder.", show_default="fpn")] = None,
    data: OptionalData = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Export a checkpoint to ONNX or OpenVINO IR, or build a TensorRT engine, and check it.

    --data (--int8): calibration images, a dataset folder, its images/train, or any image
    folder.
    """
    from dfine_cli.export.run import ExportOptions, export_weights

    options = ExportOptions(
        format=format.value, output=output, img_size=img_size_option(img_size),
        variant=variant.value if variant else None, check=check, opset=opset,
        dynamic_batch=dynamic_batch, simplify=simplify, fp16=fp16, workspace_gb=workspace,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        keep_fp32=tuple(keep_fp32 or ()), int8=int8, calib_images=calib_images, data=data,
        int8_scope=int8_scope,
    )
    render_export(export_weights(weights, options), engine=options.format == "engine", json_out=json_out)


def render_export(report: Any, *, engine: bool, json_out: bool) -> None:
    """The export's path on stdout (or JSON); the check figures on stderr, for an engine a
    table on stdout."""
    if json_out:
        print_json({"command": "export", **report.to_dict()})
        return
    if engine:
        if report.checks:
            from dfine_cli.export.engine_check import CHECK_COLUMNS, check_table

            print_table(f"{report.precision} engine vs reference", CHECK_COLUMNS,
                        check_table(report.checks))
    else:
        for batch, agreement in report.checks.items():
            typer.echo(f"check batch {batch}: {agreement.describe()}", err=True)
    typer.echo(str(report.path))
