"""`dfine eval`: COCO mAP of a checkpoint or exported model on a dataset split."""

from __future__ import annotations

from pathlib import Path

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, print_table, track
from dfine_cli.cli.commands_core import BackendChoice, VariantChoice


def evaluate(
    weights: Path = typer.Argument(..., help="Checkpoint or exported .onnx."),
    data: str = typer.Option(..., "--data", help="Dataset folder or dataset YAML."),
    split: str = typer.Option("val", help="Split to evaluate."),
    backend: BackendChoice = typer.Option(BackendChoice.auto, help="Inference backend (auto: by file type)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    img_size: int = typer.Option(None, "--img-size", help="Evaluation size [default: the model's]."),
    workers: int = typer.Option(2, min=0, help="Data-loading workers."),
    variant: VariantChoice = typer.Option(None, help="Decoder variant for official .pth files (dfine or deim)."),
    evaluator: str = typer.Option("faster", help="faster (faster-coco-eval) or pycocotools."),
    output: Path = typer.Option(None, help="Folder for metrics.json and per_class.csv [default: runs/eval/exp{N}]."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """COCO bbox mAP (12 numbers) plus per-class AP, precision and recall."""
    handle_errors(_evaluate)(weights, data, split, backend, device, batch_size, img_size, workers,
                             variant, evaluator, output, json_out)


def _evaluate(weights, data, split, backend, device, batch_size, img_size, workers, variant,
              evaluator, output, json_out) -> None:
    from dfine_cli.data.cocofile import resolve_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.engine.evaluate import evaluate_detector
    from dfine_cli.errors import UsageError
    from dfine_cli.fileio import run_dir

    checked = img_size_option(img_size)
    det = Detector.load(weights, backend=backend.value, device=device,
                        variant=variant.value if variant else None)
    size = checked or det.img_size
    if size[0] != size[1]:
        raise UsageError("evaluation uses square inputs; pass --img-size")
    if det.model is None and tuple(size) != tuple(det.img_size):
        raise UsageError(f"this exported model has a fixed input size {det.img_size}")
    located = resolve_dataset(data, split)
    result = evaluate_detector(det, located.images_dir, located.annotations, size[0],
                               batch_size=batch_size, workers=workers, backend=evaluator,
                               progress=lambda it, desc, total: track(it, desc, total))
    with run_dir("eval", output) as out_dir:
        result.write_json(out_dir / "metrics.json")
        result.write_csv(out_dir / "per_class.csv")
    if json_out:
        import json

        print_json({"command": "eval", "weights": str(weights), "split": split, "output_dir": str(out_dir),
                    **json.loads(json.dumps(result.to_json()))})
        return
    print_table("COCO bbox", ["metric", "value"], [(k, v) for k, v in result.stats.items()])
    print_table("per class", ["class", "AP", "AP50", "precision", "recall", "gt"],
                [(c.name, c.ap, c.ap50, c.precision, c.recall, c.num_gt) for c in result.per_class])
