"""``dfine demo``: the offline end-to-end run the README starts with."""

from __future__ import annotations

from typing import Annotated

import typer

from dfine_cli.cli._common import handle_errors, print_json, report_saved, track
from dfine_cli.cli.options import Json, RunFolderOutput, Verbose
from dfine_cli.demo import MIN_DEMO_IMG_SIZE


@handle_errors
def demo(
    output: RunFolderOutput = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 8,
    images: Annotated[int, typer.Option("--images", min=10, help="Synthetic images (80% train, 20% val).")] = 120,
    img_size: Annotated[int, typer.Option("--img-size", help=f"Image and network side in pixels, a multiple of 32 and at least {MIN_DEMO_IMG_SIZE}.")] = MIN_DEMO_IMG_SIZE,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the data and the training run.")] = 0,
    export: Annotated[bool, typer.Option("--export/--no-export", help="Export ONNX and evaluate it too.")] = True,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Offline demo: synthesise a dataset, train D-FINE-N on the CPU, evaluate, export, predict.

    No downloads. Writes the dataset, the run (checkpoints, metrics, plot), model.onnx,
    annotated validation images and metrics.json into the run folder.
    """
    from dfine_cli.demo import demo_in_run_folder

    result = demo_in_run_folder(output, epochs=epochs, images=images, img_size=img_size,
                                seed=seed, export=export, progress=track)
    out = result.output_dir
    ap = result.metrics["torch"]["stats"]["AP"]
    ap50 = result.metrics["torch"]["stats"]["AP50"]
    summary = {"command": "demo", "output_dir": str(out), "checkpoint": str(result.checkpoint),
               "onnx": str(result.onnx) if result.onnx else None, "val_AP": ap, "val_AP50": ap50,
               "onnx_val_AP": result.metrics.get("onnxruntime", {}).get("stats", {}).get("AP"),
               "annotated": [str(p) for p in result.annotated[:3]]}
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"validation mAP50:95 {ap:.3f}, mAP50 {ap50:.3f} (torch)")
        if result.onnx:
            typer.echo(f"validation mAP50:95 {summary['onnx_val_AP']:.3f} (ONNX Runtime, {result.onnx})")
        if result.annotated:
            typer.echo(f"annotated predictions: {result.annotated[0].parent}")
        typer.echo(f"metrics: {out / 'metrics.json'}")
    report_saved(out)
