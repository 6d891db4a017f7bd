"""Evaluation on a COCO-format split: one loop for the trainer, ``dfine eval``, the demo, ``viz``
and ``bench compare``.

:func:`run_evaluation` is the loop: it feeds batches to a predict function and scores every
image's top-K detections with :class:`~dfine_cli.engine.evaluator.CocoEvaluator` (all
detections are kept, as the official evaluation does; a confidence threshold applies only where
something is drawn or counted). The trainer calls it with its model on the validation split;
:func:`evaluate` calls it with a :class:`~dfine_cli.detector.Detector` (any backend), whose
images are prepared by :func:`~dfine_cli.detector.network_input`, the conversion ``predict``
uses, and which also returns every image's :class:`ImagePrediction` for reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dfine_cli.data.dataset import CocoDetectionDataset
from dfine_cli.data.transforms import EvalTransforms, collate
from dfine_cli.engine.evaluator import BACKENDS, CocoEvaluator, EvalResult
from dfine_cli.errors import DataError, UsageError
from dfine_cli.progress import Progress

if TYPE_CHECKING:
    from dfine_cli.detector import Detector

log = logging.getLogger("dfine.engine.evaluate")

#: ``(images float32 [B,3,H,W] in 0..1, orig sizes int64 [B,2] (w,h)) -> labels, boxes, scores``
PredictFn = Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any, Any]]
#: Called once per batch with its targets and the predicted ``labels [B,K]``, ``boxes [B,K,4]``
#: (xyxy, original pixels) and ``scores [B,K]`` as numpy arrays.
BatchRecorder = Callable[[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray], None]


@dataclass
class EvalSplit:
    dataset: CocoDetectionDataset
    annotation_file: Path


def make_eval_split(images_dir: Path, annotation_file: Path, img_size: int) -> EvalSplit:
    """The split the trainer validates on: images resized to ``img_size`` square."""
    dataset = CocoDetectionDataset(images_dir, annotation_file, transforms=EvalTransforms(img_size))
    return EvalSplit(dataset, Path(annotation_file))


def eval_loader(
    dataset: Dataset[Any], batch_size: int, workers: int, sampler: Any = None
) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=workers, collate_fn=collate,
                      persistent_workers=False)


def run_evaluation(
    predict: PredictFn,
    split: EvalSplit,
    batches: Iterable[tuple[torch.Tensor, list[dict[str, Any]]]],
    backend: str = "faster",
    progress: Progress | None = None,
    total: int | None = None,
    record: BatchRecorder | None = None,
) -> EvalResult:
    """Predict every batch, accumulate per image id, gather across processes, score.

    ``backend`` is the COCO evaluator (``faster`` or ``pycocotools``); ``record`` sees every
    batch's predictions (used to keep them for reports).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown evaluator {backend!r}; choose faster or pycocotools")
    evaluator = CocoEvaluator(
        split.annotation_file, split.dataset.label_to_category, backend=backend  # type: ignore[arg-type]
    )
    iterator = progress(batches, "eval", total) if progress is not None else batches
    for images, targets in iterator:
        sizes = torch.stack([t["orig_size"] for t in targets]).to(torch.int64)
        labels, boxes, scores = (_np(x) for x in predict(images, sizes))
        evaluator.update([int(t["image_id"]) for t in targets], labels, boxes, scores)
        if record is not None:
            record(targets, labels, boxes, scores)
    evaluator.gather_and_merge()
    return evaluator.compute()


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


# -- a detector on a dataset split ---------------------------------------------------------------
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


@dataclass(frozen=True)
class Evaluation:
    """COCO metrics of a detector on a split, and every image's predictions (dataset order)."""

    result: EvalResult
    predictions: list[ImagePrediction]


def open_split(data: str | Path, split: str) -> CocoDetectionDataset:
    """The untransformed :class:`CocoDetectionDataset` of ``split`` in ``data`` (a dataset
    folder or YAML file)."""
    from dfine_cli.data.cocofile import resolve_dataset

    resolved = resolve_dataset(data, split)
    return CocoDetectionDataset(resolved.images_dir, resolved.annotations)


def check_classes(detector: Detector, dataset: CocoDetectionDataset) -> None:
    """The model must predict the dataset's classes (same number, same order)."""
    model_classes = len(detector.class_names)
    if model_classes != dataset.num_classes:
        raise DataError(
            f"the model predicts {model_classes} classes but the dataset has "
            f"{dataset.num_classes} ({', '.join(dataset.class_names[:6])}...): evaluate a model "
            "trained on this dataset"
        )


class _NetworkInputs(Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """The first ``count`` images of ``dataset`` as network inputs of ``size`` ``(h, w)``, with
    their targets in original pixels (``boxes`` xyxy, ``labels``, ``image_id``, ``orig_size``)."""

    def __init__(self, dataset: CocoDetectionDataset, size: tuple[int, int], count: int) -> None:
        self.dataset, self.size, self.count = dataset, size, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from dfine_cli.detector import network_input

        image, target = self.dataset.load_item(index)
        return network_input(image.as_subclass(torch.Tensor), self.size), target


def evaluate(
    detector: Detector,
    dataset: CocoDetectionDataset,
    *,
    batch_size: int = 4,
    workers: int = 0,
    limit: int | None = None,
    evaluator: str = "faster",
    progress: Progress | None = None,
) -> Evaluation:
    """COCO bbox metrics of ``detector`` (any backend) on ``dataset`` (an untransformed split,
    see :func:`open_split`), and every image's predictions.

    Images are resized to the detector's input size exactly as ``predict`` does; ``limit``
    keeps only the first images; ``workers`` decode in parallel; ``evaluator`` is ``faster``
    (faster-coco-eval) or ``pycocotools``.
    """
    check_classes(detector, dataset)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise DataError("no images to evaluate")
    loader = eval_loader(_NetworkInputs(dataset, detector.img_size, count), batch_size, workers)
    predictions: list[ImagePrediction] = []

    def predict(images: torch.Tensor, sizes: torch.Tensor) -> tuple[Any, Any, Any]:
        return detector.infer_inputs(np.ascontiguousarray(images.numpy()), sizes.numpy())

    def keep(targets: list[dict[str, Any]], labels: np.ndarray, boxes: np.ndarray,
             scores: np.ndarray) -> None:
        for j, target in enumerate(targets):
            width, height = (int(v) for v in target["orig_size"])
            predictions.append(ImagePrediction(
                image_id=int(target["image_id"]),
                path=dataset.image_path(int(target["idx"])),
                width=width,
                height=height,
                gt_boxes=target["boxes"].as_subclass(torch.Tensor).numpy().astype(np.float32).reshape(-1, 4),
                gt_labels=target["labels"].numpy().astype(np.int64),
                boxes=np.asarray(boxes[j], dtype=np.float32),
                labels=np.asarray(labels[j], dtype=np.int64),
                scores=np.asarray(scores[j], dtype=np.float32),
            ))

    split = EvalSplit(dataset, dataset.annotation_file)
    result = run_evaluation(predict, split, loader, backend=evaluator, progress=progress,
                            total=len(loader), record=keep)
    return Evaluation(result, predictions)


def evaluate_predictions(
    predictions: list[ImagePrediction], dataset: CocoDetectionDataset, backend: str = "faster"
) -> EvalResult:
    """COCO bbox metrics of ``predictions`` (made elsewhere) against the dataset's annotations."""
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
