"""Evaluation of a model (or any inference backend) on a COCO-format split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dfine_cli.data.dataset import CocoDetectionDataset
from dfine_cli.data.transforms import EvalTransforms
from dfine_cli.engine.evaluator import CocoEvaluator, EvalResult
from dfine_cli.errors import UsageError

log = logging.getLogger("dfine.engine.evaluate")

# (images float32 [B,3,S,S] in 0..1, orig sizes int64 [B,2] (w,h)) -> labels, boxes, scores
PredictFn = Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any, Any]]


@dataclass
class EvalSplit:
    dataset: CocoDetectionDataset
    annotation_file: Path


def eval_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def make_eval_split(images_dir: Path, annotation_file: Path, img_size: int) -> EvalSplit:
    dataset = CocoDetectionDataset(images_dir, annotation_file, transforms=EvalTransforms(img_size))
    return EvalSplit(dataset, Path(annotation_file))


def eval_loader(
    dataset: Dataset[Any], batch_size: int, workers: int, sampler: Any = None
) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=workers, collate_fn=eval_collate,
                      persistent_workers=False)


def run_evaluation(
    predict: PredictFn,
    split: EvalSplit,
    batches: Iterable[tuple[torch.Tensor, list[dict[str, Any]]]],
    backend: str = "faster",
    progress: Callable[[Iterable[Any], str, int | None], Iterator[Any]] | None = None,
    total: int | None = None,
) -> EvalResult:
    """Predict every batch, accumulate per image id, gather across processes, score."""
    if backend not in ("faster", "pycocotools"):
        raise UsageError(f"unknown evaluator {backend!r}; choose faster or pycocotools")
    evaluator = CocoEvaluator(
        split.annotation_file, split.dataset.label_to_category, backend=backend  # type: ignore[arg-type]
    )
    iterator = progress(batches, "eval", total) if progress is not None else batches
    for images, targets in iterator:
        sizes = torch.stack([t["orig_size"] for t in targets]).to(torch.int64)
        labels, boxes, scores = predict(images, sizes)
        ids = [int(t["image_id"]) for t in targets]
        evaluator.update(ids, _np(labels), _np(boxes), _np(scores))
    evaluator.gather_and_merge()
    return evaluator.compute()


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def evaluate_detector(
    detector: Any,
    images_dir: Path,
    annotation_file: Path,
    img_size: int,
    *,
    batch_size: int = 4,
    workers: int = 0,
    backend: str = "faster",
    progress: Callable[[Iterable[Any], str, int | None], Iterator[Any]] | None = None,
) -> EvalResult:
    """Evaluate a :class:`~dfine_cli.detector.Detector` (any backend) on one COCO split."""
    split = make_eval_split(images_dir, annotation_file, img_size)
    if len(detector.class_names) != split.dataset.num_classes:
        raise UsageError(f"the model has {len(detector.class_names)} classes but "
                         f"{annotation_file} has {split.dataset.num_classes}")
    loader = eval_loader(split.dataset, batch_size, workers)

    def predict(images: torch.Tensor, sizes: torch.Tensor) -> tuple[Any, Any, Any]:
        return detector.backend(np.ascontiguousarray(images.numpy()), sizes.numpy().astype(np.int64))

    return run_evaluation(predict, split, loader, backend=backend, progress=progress, total=len(loader))

