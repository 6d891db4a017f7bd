"""``dfine viz``: an HTML report of a model on a dataset, or a FiftyOne dataset to browse."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, track
from dfine_cli.cli.options import (
    BACKEND_DEFAULT,
    CONF_DEFAULT,
    DEVICE_DEFAULT,
    Backend,
    BackendChoice,
    BatchSize,
    Bf16,
    Compile,
    Conf,
    Data,
    Device,
    Fp16,
    ImgSize,
    Json,
    MaxImages,
    Split,
    Threads,
    Variant,
    Verbose,
    WeightsPath,
    output_option,
    precision_option,
)
from dfine_cli.detector_options import DetectorOptions

app = typer.Typer(no_args_is_help=True, help="Look at a model's results on a dataset.")


@app.callback()
def group(verbose: Verbose = False) -> None:
    """-v/--verbose is accepted here too, between the group and its command."""


def _options(backend: BackendChoice, device: str, threads: int | None, variant: object,
             img_size: int | None, fp16: bool, bf16: bool, compile_: bool) -> DetectorOptions:
    return DetectorOptions(backend=backend.value, device=device, threads=threads,
                           variant=getattr(variant, "value", None), img_size=img_size_option(img_size),
                           precision=precision_option(fp16, bf16), compile=compile_)


@app.command("report")
@handle_errors
def report(
    weights: WeightsPath,
    data: Data,
    output: Annotated[Path, output_option("HTML file to write", "report.html")] = Path("report.html"),
    split: Split = "val",
    conf: Conf = CONF_DEFAULT,
    iou: Annotated[float, typer.Option("--iou", min=0.05, max=0.95, help="IoU that makes a detection correct.")] = 0.5,
    gallery: Annotated[int, typer.Option("--gallery", min=0, help="Images with the most errors to show.")] = 12,
    backend: Backend = BACKEND_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    threads: Threads = None,
    batch_size: BatchSize = 1,
    img_size: ImgSize = None,
    variant: Variant = None,
    max_images: MaxImages = None,
    compile_: Compile = False,
    fp16: Fp16 = False,
    bf16: Bf16 = False,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """One self-contained HTML file: AP table, PR curves, confusion matrix, worst images.

    AP is measured on every detection; --conf sets what the error counts, the confusion
    matrix and the gallery count as detected.
    """
    from dfine_cli.viz.run import report as write_report

    summary = write_report(weights, data, output, split=split, conf=conf, iou=iou, gallery=gallery,
                           options=_options(backend, device, threads, variant, img_size, fp16, bf16,
                                           compile_),
                           batch_size=batch_size, max_images=max_images, progress=track)
    if json_out:
        print_json({"command": "viz report", **summary.to_dict()})
        return
    typer.echo(f"AP {summary.ap:.4f}, AP50 {summary.ap50:.4f}, {summary.false_positives} false "
               f"positives, {summary.false_negatives} missed -> {summary.output}")


@app.command("fiftyone")
@handle_errors
def fiftyone(
    weights: WeightsPath,
    data: Data,
    split: Split = "val",
    name: Annotated[str | None, typer.Option("--name", help="FiftyOne dataset name (replaced if it exists).", show_default="dfine-<weights>-<split>")] = None,
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Open the FiftyOne App afterwards (blocks until closed).")] = False,
    conf: Conf = CONF_DEFAULT,
    backend: Backend = BACKEND_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    threads: Threads = None,
    batch_size: BatchSize = 1,
    img_size: ImgSize = None,
    variant: Variant = None,
    max_images: MaxImages = None,
    compile_: Compile = False,
    fp16: Fp16 = False,
    bf16: Bf16 = False,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Ground truth and predictions as a FiftyOne dataset, evaluated per sample (eval_fp...).

    Only predictions with score >= --conf are stored, and FiftyOne's mAP counts only those:
    --conf 0 stores every detection for the COCO-comparable figure.
    """
    from dfine_cli.viz import fiftyone_export as fox
    from dfine_cli.viz.run import to_fiftyone

    created = to_fiftyone(weights, data, split=split, name=name, conf=conf,
                          options=_options(backend, device, threads, variant, img_size, fp16, bf16,
                                           compile_),
                          batch_size=batch_size, max_images=max_images, progress=track)
    if json_out:
        print_json({"command": "viz fiftyone", "dataset": created["name"],
                    "samples": created["samples"], "mAP": created["mAP"]})
    else:
        typer.echo(f"FiftyOne dataset {created['name']}: {created['samples']} samples, "
                   f"mAP {created['mAP']:.4f} (sort by eval_fp to see false positives)")
    if launch:
        fox.launch(created["name"])
