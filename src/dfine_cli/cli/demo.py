"""`dfine demo`: the offline end-to-end run the README starts with."""

from __future__ import annotations

from pathlib import Path

import typer

from dfine_cli.cli._common import handle_errors, print_json


def demo(
    output: Path = typer.Option(None, help="Output folder; default runs/demo/exp{N}."),
    model: str = typer.Option("n", help="Model size: n, s, m, l or x."),
    conf: float = typer.Option(0.0, min=0.0, max=1.0, help="Minimum score to draw."),
    max_det: int = typer.Option(10, min=1, help="Draw at most this many detections."),
    seed: int = typer.Option(0, help="Seed for the image and the random weights."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Offline demo: predict on a generated image with a RANDOMLY INITIALISED model.

    No downloads. The detections are meaningless (the weights are random); the demo shows
    that model construction, inference, postprocessing and drawing work on this machine.
    """
    handle_errors(_demo)(output, model, conf, max_det, seed, json_out)


def _demo(output, model, conf, max_det, seed, json_out) -> None:
    from dfine_cli.demo import run_demo
    from dfine_cli.fileio import next_run_dir

    typer.echo("note: this demo uses a randomly initialised model; its detections are "
               "meaningless and only show that the pipeline runs.", err=True)
    out = Path(output) if output else next_run_dir("demo")
    result = run_demo(out, size=model, conf=conf, seed=seed, max_det=max_det)
    if json_out:
        print_json({"command": "demo", "output_dir": str(result.output_dir),
                    "image": str(result.image_path), "annotated": str(result.annotated_path),
                    "detections": result.detections, "weights": "random"})
    else:
        typer.echo(f"{result.detections} detection(s) from random weights -> {result.annotated_path}")
