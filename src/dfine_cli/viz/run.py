"""``dfine viz report`` and ``dfine viz fiftyone`` as one call each: open the weights, predict
one dataset split, score it, and hand the predictions to the report or to FiftyOne.

Predictions keep every top-K detection (as the COCO evaluation does); ``conf`` applies only
to what is drawn, counted or stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfine_cli.detector_options import DEFAULT_CONF, DetectorOptions
from dfine_cli.errors import UsageError
from dfine_cli.progress import Progress


@dataclass(frozen=True)
class SplitPredictions:
    """A dataset split, the detector's predictions on it and their COCO evaluation."""

    dataset: Any  # dfine_cli.data.dataset.CocoDetectionDataset
    predictions: list[Any]  # one ImagePrediction per image
    result: Any  # dfine_cli.engine.evaluator.EvalResult


def predict_split_of(
    weights: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    options: DetectorOptions | None = None,
    batch_size: int = 1,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> SplitPredictions:
    """Predict ``split`` of ``data`` (a dataset folder or YAML; ``max_images``: the first N)
    with ``weights`` opened by :func:`~dfine_cli.detector_options.open_detector`, and score it."""
    from dfine_cli.detector_options import check_options, open_detector
    from dfine_cli.engine.evaluate import evaluate, open_split

    check_options(weights, options)
    dataset = open_split(data, split)
    detector = open_detector(weights, options)
    run = evaluate(detector, dataset, batch_size=batch_size, limit=max_images, progress=progress)
    return SplitPredictions(dataset, run.predictions, run.result)


def report(
    weights: str | Path,
    data: str | Path,
    output: Path,
    *,
    split: str = "val",
    conf: float = DEFAULT_CONF,
    iou: float = 0.5,
    gallery: int = 12,
    options: DetectorOptions | None = None,
    batch_size: int = 1,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> Any:
    """Write the HTML report of ``weights`` on ``split`` of ``data`` to ``output`` (.html).

    ``conf`` is the score threshold of the error counts, confusion matrix and gallery; ``iou``
    the overlap that makes a detection correct; ``gallery`` the number of worst images shown.
    Returns the :class:`~dfine_cli.viz.report.ReportSummary`.
    """
    from dfine_cli.fileio import check_output_file
    from dfine_cli.viz.report import write_report

    if Path(output).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--output must be an .html file, got {output}")
    check_output_file(output)
    run = predict_split_of(weights, data, split=split, options=options, batch_size=batch_size,
                           max_images=max_images, progress=progress)
    return write_report(
        output, run.predictions, run.dataset.class_names, run.result,
        title=f"{Path(weights).name} on {Path(data).name} ({split})",
        subtitle=f"Weights {weights}, dataset {data}.", conf=conf, iou=iou, gallery=gallery,
    )


def to_fiftyone(
    weights: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    name: str | None = None,
    conf: float = DEFAULT_CONF,
    options: DetectorOptions | None = None,
    batch_size: int = 1,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Ground truth and the predictions of ``weights`` with score ``>= conf`` as a FiftyOne
    dataset ``name`` (default ``dfine-<weights>-<split>``, replaced if it exists).

    Returns FiftyOne's ``name``, ``samples`` and ``mAP`` (over the stored predictions).
    Fails before predicting when FiftyOne is not installed.
    """
    from dfine_cli.viz import fiftyone_export as fox

    fox.require_fiftyone()
    run = predict_split_of(weights, data, split=split, options=options, batch_size=batch_size,
                           max_images=max_images, progress=progress)
    records = fox.to_sample_records(run.predictions, run.dataset.class_names, conf=conf)
    return fox.create_fiftyone_dataset(records, name or f"dfine-{Path(weights).stem}-{split}")
