"""``dfine eval`` as one call: open the weights, evaluate a dataset split, keep the results.

The measurement itself is :func:`dfine_cli.engine.evaluate.evaluate` (the same one the demo,
``viz`` and ``bench compare`` use); this adds choosing the model and the split, and writing
``metrics.json`` and ``per_class.csv`` into a run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfine_cli.detector_options import DetectorOptions
from dfine_cli.engine.evaluator import EvalResult
from dfine_cli.errors import UsageError
from dfine_cli.progress import Progress


@dataclass(frozen=True)
class EvalRun:
    """An evaluation and the run folder its ``metrics.json`` and ``per_class.csv`` are in."""

    result: EvalResult
    output_dir: Path


def evaluate_weights(
    weights: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    options: DetectorOptions | None = None,
    batch_size: int = 4,
    workers: int = 2,
    evaluator: str = "faster",
    output: Path | None = None,
    progress: Progress | None = None,
) -> EvalRun:
    """COCO bbox metrics of ``weights`` on ``split`` of ``data`` (a dataset folder or YAML).

    The input is square: ``options.img_size`` or the model's own size. ``evaluator`` is
    ``faster`` (faster-coco-eval) or ``pycocotools``. The files go into ``output`` or the
    next ``runs/eval/exp{N}``, created only once the evaluation has finished.
    """
    from dfine_cli.detector_options import check_options, open_detector
    from dfine_cli.engine.evaluate import evaluate, open_split
    from dfine_cli.fileio import run_dir

    check_options(weights, options)
    dataset = open_split(data, split)  # a bad --data fails before the model is loaded
    detector = open_detector(weights, options)
    size = detector.img_size
    if size[0] != size[1]:
        raise UsageError("evaluation uses square inputs; pass --img-size")
    result = evaluate(detector, dataset, batch_size=batch_size, workers=workers,
                      evaluator=evaluator, progress=progress).result
    with run_dir("eval", output) as out_dir:
        result.write_json(out_dir / "metrics.json")
        result.write_csv(out_dir / "per_class.csv")
    return EvalRun(result, out_dir)
