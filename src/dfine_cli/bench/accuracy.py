"""Run a detector over one split of a COCO-format dataset and score it with COCOeval.

Shared by ``dfine bench compare`` (mAP next to latency) and ``dfine viz`` (report, FiftyOne).
All top-K detections of every image are kept, as the official evaluation does; a confidence
threshold is applied only where something is drawn or counted (viz).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dfine_cli.detector import Detector
from dfine_cli.engine.evaluator import CocoEvaluator, EvalResult
from dfine_cli.errors import DataError

log = logging.getLogger("dfine.bench.accuracy")

T = TypeVar("T")
Progress = Callable[[Iterable[T], str, int], Iterator[T]]


@dataclass(frozen=True)
class ImagePrediction:
    """Ground truth and the detector's top-K output for one dataset image.

    Boxes are ``xyxy`` in the image's pixels; labels are contiguous ``0..K-1`` (the
    dataset's label order, which the model shares).
    """

    image_id: int
    path: Path
    width: int
    height: int
    gt_boxes: np.ndarray  # float32 [G, 4]
    gt_labels: np.ndarray  # int64 [G]
    boxes: np.ndarray  # float32 [K, 4]
    labels: np.ndarray  # int64 [K]
    scores: np.ndarray  # float32 [K], descending


def open_split(data: str | Path, split: str) -> Any:
    """The :class:`~dfine_cli.data.dataset.CocoDetectionDataset` of ``split`` in ``data``."""
    from dfine_cli.data.cocofile import resolve_dataset
    from dfine_cli.data.dataset import CocoDetectionDataset

    resolved = resolve_dataset(data, split)
    return CocoDetectionDataset(resolved.images_dir, resolved.annotations)


def check_classes(detector: Detector, dataset: Any) -> None:
    """The model must predict the dataset's classes (same number, same order)."""
    model_classes = len(detector.class_names)
    if model_classes != dataset.num_classes:
        raise DataError(
            f"the model predicts {model_classes} classes but the dataset has "
            f"{dataset.num_classes} ({', '.join(dataset.class_names[:6])}...): evaluate a model "
            "trained on this dataset"
        )


def predict_split(
    detector: Detector,
    dataset: Any,
    *,
    batch_size: int = 1,
    limit: int | None = None,
    progress: Progress[list[int]] | None = None,
) -> list[ImagePrediction]:
    """Run ``detector`` over ``dataset`` (``limit``: only the first images) in batches."""
    check_classes(detector, dataset)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    batches = [list(range(s, min(s + batch_size, count))) for s in range(0, count, batch_size)]
    iterator: Iterable[list[int]] = batches
    if progress is not None:
        iterator = progress(batches, "predicting", len(batches))
    results: list[ImagePrediction] = []
    for indices in iterator:
        samples = [dataset.load_item(i) for i in indices]
        arrays = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image, _ in samples]
        labels, boxes, scores = detector.infer_batch(arrays)
        for j, (index, (image, target)) in enumerate(zip(indices, samples, strict=True)):
            results.append(
                ImagePrediction(
                    image_id=int(target["image_id"]),
                    path=dataset.image_path(index),
                    width=int(image.shape[-1]),
                    height=int(image.shape[-2]),
                    gt_boxes=target["boxes"].numpy().astype(np.float32).reshape(-1, 4),
                    gt_labels=target["labels"].numpy().astype(np.int64),
                    boxes=np.asarray(boxes[j], dtype=np.float32),
                    labels=np.asarray(labels[j], dtype=np.int64),
                    scores=np.asarray(scores[j], dtype=np.float32),
                )
            )
    return results


def evaluate_predictions(
    predictions: list[ImagePrediction], dataset: Any, backend: str = "faster"
) -> EvalResult:
    """COCO bbox metrics of ``predictions`` against the dataset's annotation file."""
    if not predictions:
        raise DataError("no images to evaluate")
    evaluator = CocoEvaluator(dataset.annotation_file, dataset.label_to_category,
                              backend=backend)  # type: ignore[arg-type]
    evaluator.update(
        [p.image_id for p in predictions],
        [p.labels for p in predictions],
        [p.boxes for p in predictions],
        [p.scores for p in predictions],
    )
    return evaluator.compute()
