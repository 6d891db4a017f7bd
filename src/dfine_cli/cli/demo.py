"""`dfine demo`: the offline end-to-end run the README starts with."""

from __future__ import annotations

from pathlib import Path

import typer

from dfine_cli.cli._common import handle_errors, print_json, track


def demo(
    output: Path = typer.Option(None, help="Output folder [default: runs/demo/exp{N}]."),
    epochs: int = typer.Option(8, min=1, help="Training epochs."),
    images: int = typer.Option(120, min=10, help="Synthetic images (80% train, 20% val)."),
    img_size: int = typer.Option(320, "--img-size", help="Image and network size (multiple of 32, >= 320)."),
    seed: int = typer.Option(0, help="Seed for the data and the training run."),
    export: bool = typer.Option(True, "--export/--no-export", help="Export ONNX and evaluate it too."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Offline demo: synthesise a dataset, train D-FINE-N on the CPU, evaluate, export, predict.

    No downloads. Takes a few minutes on a laptop-class CPU; writes the dataset, the run
    (checkpoints, metrics, plot), model.onnx, annotated validation images and metrics.json.
    """
    handle_errors(_demo)(output, epochs, images, img_size, seed, export, json_out)


def _demo(output, epochs, images, img_size, seed, export, json_out) -> None:
    from dfine_cli.demo import run_demo
    from dfine_cli.errors import UsageError
    from dfine_cli.fileio import run_dir

    if img_size < 320 or img_size % 32:
        raise UsageError("--img-size must be a multiple of 32 and at least 320")
    with run_dir("demo", output) as out:  # removed again if the demo fails before writing
        result = run_demo(out, epochs=epochs, images=images, img_size=img_size, seed=seed,
                          export=export, progress=lambda it, desc, total: track(it, desc, total))
    ap = result.metrics["torch"]["stats"]["AP"]
    ap50 = result.metrics["torch"]["stats"]["AP50"]
    summary = {"command": "demo", "output_dir": str(out), "checkpoint": str(result.checkpoint),
               "onnx": str(result.onnx) if result.onnx else None, "val_AP": ap, "val_AP50": ap50,
               "onnx_val_AP": result.metrics.get("onnxruntime", {}).get("stats", {}).get("AP"),
               "annotated": [str(p) for p in result.annotated[:3]]}
    if json_out:
        print_json(summary)
        return
    typer.echo(f"validation mAP50:95 {ap:.3f}, mAP50 {ap50:.3f} (torch)")
    if result.onnx:
        typer.echo(f"validation mAP50:95 {summary['onnx_val_AP']:.3f} (ONNX Runtime, {result.onnx})")
    if result.annotated:
        typer.echo(f"annotated predictions: {result.annotated[0].parent}")
    typer.echo(f"metrics: {out / 'metrics.json'}")
