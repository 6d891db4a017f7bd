"""``dfine viz``: an HTML report of a model on a dataset, or a FiftyOne dataset to browse."""

from __future__ import annotations

from pathlib import Path

import typer

from dfine_cli.cli._common import handle_errors, print_json, track
from dfine_cli.cli.commands_core import BackendChoice
from dfine_cli.errors import UsageError
from dfine_cli.fileio import check_output_file

app = typer.Typer(no_args_is_help=True, help="Look at a model's results on a dataset.")


def _predict(data, weights, split, backend, device, threads, batch_size, max_images):
    from dfine_cli.bench.accuracy import evaluate_predictions, open_split, predict_split
    from dfine_cli.detector import Detector

    if threads:
        import torch

        torch.set_num_threads(threads)
    dataset = open_split(data, split)
    detector = Detector.load(weights, backend=backend.value, device=device, threads=threads)
    predictions = predict_split(detector, dataset, batch_size=batch_size, limit=max_images,
                                progress=lambda it, desc, total: track(it, desc, total))
    return dataset, predictions, evaluate_predictions(predictions, dataset)


@app.command("report")
def report(
    data: Path = typer.Argument(..., help="Dataset folder or YAML (COCO layout)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint, .onnx or .engine."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    split: str = typer.Option("val", help="Split to evaluate."),
    conf: float = typer.Option(0.25, min=0.0, max=1.0, help="Score threshold for errors, confusion matrix and gallery."),
    iou: float = typer.Option(0.5, min=0.05, max=0.95, help="IoU that makes a detection correct."),
    gallery: int = typer.Option(12, min=0, help="Images with the most errors to show."),
    backend: BackendChoice = typer.Option(BackendChoice.auto, help="Inference backend; auto by file type."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(None, min=1, help="CPU threads."),
    batch_size: int = typer.Option(1, min=1, help="Images per forward pass."),
    max_images: int = typer.Option(None, min=1, help="Only the first N images of the split."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """One self-contained HTML file: AP table, PR curves, confusion matrix, worst images."""
    handle_errors(_report)(data, weights, output, split, conf, iou, gallery, backend, device,
                           threads, batch_size, max_images, json_out)


def _report(data, weights, output, split, conf, iou, gallery, backend, device, threads,
            batch_size, max_images, json_out) -> None:
    from dfine_cli.viz.report import write_report

    if Path(output).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--output must be an .html file, got {output}")
    check_output_file(output)
    dataset, predictions, result = _predict(data, weights, split, backend, device, threads,
                                            batch_size, max_images)
    summary = write_report(
        output, predictions, dataset.class_names, result,
        title=f"{Path(weights).name} on {Path(data).name} ({split})",
        subtitle=f"Weights {weights}, dataset {data}.", conf=conf, iou=iou, gallery=gallery,
    )
    if json_out:
        print_json({"command": "viz report", **summary.to_dict()})
        return
    typer.echo(f"AP {summary.ap:.4f}, AP50 {summary.ap50:.4f}, {summary.false_positives} false "
               f"positives, {summary.false_negatives} missed -> {summary.output}")


@app.command("fiftyone")
def fiftyone(
    data: Path = typer.Argument(..., help="Dataset folder or YAML (COCO layout)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint, .onnx or .engine."),
    split: str = typer.Option("val", help="Split to load."),
    name: str = typer.Option(None, help="FiftyOne dataset name; default dfine-<weights>-<split> (replaced if it exists)."),
    launch: bool = typer.Option(False, "--launch/--no-launch", help="Open the FiftyOne App afterwards (blocks until closed)."),
    conf: float = typer.Option(0.0, min=0.0, max=1.0, help="Minimum score of the predictions stored."),
    backend: BackendChoice = typer.Option(BackendChoice.auto, help="Inference backend; auto by file type."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(None, min=1, help="CPU threads."),
    batch_size: int = typer.Option(1, min=1, help="Images per forward pass."),
    max_images: int = typer.Option(None, min=1, help="Only the first N images of the split."),
    json_out: bool = typer.Option(False, "--json", help="Print the dataset name and counts as JSON."),
) -> None:
    """Ground truth and predictions as a FiftyOne dataset, evaluated per sample (eval_fp...)."""
    handle_errors(_fiftyone)(data, weights, split, name, launch, conf, backend, device, threads,
                             batch_size, max_images, json_out)


def _fiftyone(data, weights, split, name, launch, conf, backend, device, threads, batch_size,
              max_images, json_out) -> None:
    from dfine_cli.viz import fiftyone_export as fox

    fox.require_fiftyone()  # fail before predicting when FiftyOne is missing
    dataset, predictions, _ = _predict(data, weights, split, backend, device, threads,
                                       batch_size, max_images)
    records = fox.to_sample_records(predictions, dataset.class_names, conf=conf)
    created = fox.create_fiftyone_dataset(records, name or f"dfine-{Path(weights).stem}-{split}")
    if json_out:
        print_json({"command": "viz fiftyone", "dataset": created["name"],
                    "samples": created["samples"], "mAP": created["mAP"]})
    else:
        typer.echo(f"FiftyOne dataset {created['name']}: {created['samples']} samples, "
                   f"mAP {created['mAP']:.4f} (sort by eval_fp to see false positives)")
    if launch:
        fox.launch(created["name"])
