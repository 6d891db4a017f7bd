"""Ground truth and predictions as a FiftyOne dataset, evaluated per sample.

:func:`to_sample_records` is pure (our predictions -> plain records in FiftyOne's label
conventions: ``bounding_box`` is ``[x, y, w, h]`` relative to the image, ``confidence`` on
predictions only). :func:`create_fiftyone_dataset` turns the records into ``fo.Sample``s and
runs FiftyOne's COCO-style ``evaluate_detections`` with ``eval_key="eval"``, which writes
``eval_tp``/``eval_fp``/``eval_fn`` on every sample, so ``dataset.sort_by("eval_fp",
reverse=True)`` (or the App's sidebar) shows the images with the most false positives first.

FiftyOne needs its MongoDB (the ``fiftyone-db`` package, or ``FIFTYONE_DATABASE_URI``);
only :func:`create_fiftyone_dataset` and :func:`launch` touch it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfine_cli.engine.evaluate import ImagePrediction
from dfine_cli.errors import DependencyError

log = logging.getLogger("dfine.viz.fiftyone")

GT_FIELD = "ground_truth"
PRED_FIELD = "predictions"
EVAL_KEY = "eval"


@dataclass(frozen=True)
class DetectionRecord:
    """One box in FiftyOne's convention: ``[x, y, w, h]`` in 0..1 of the image size."""

    label: str
    bounding_box: tuple[float, float, float, float]
    confidence: float | None = None


@dataclass(frozen=True)
class SampleRecord:
    filepath: str
    width: int
    height: int
    image_id: int
    ground_truth: list[DetectionRecord] = field(default_factory=list)
    predictions: list[DetectionRecord] = field(default_factory=list)


def relative_xywh(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """``xyxy`` pixels -> FiftyOne ``[x, y, w, h]`` relative, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = (min(max(v, 0.0), float(width)) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), float(height)) for v in (y1, y2))
    return (x1 / width, y1 / height, max(x2 - x1, 0.0) / width, max(y2 - y1, 0.0) / height)


def to_sample_records(
    predictions: Sequence[ImagePrediction], class_names: Sequence[str], conf: float = 0.0
) -> list[SampleRecord]:
    """Convert per-image ground truth and detections (score ``>= conf``) to records.

    Raises:
        ValueError: a label has no class name.
    """
    records = []
    for p in predictions:
        if p.width <= 0 or p.height <= 0:
            raise ValueError(f"image {p.path} has no size")

        def name(label: int) -> str:
            if not 0 <= label < len(class_names):
                raise ValueError(f"label {label} has no class name ({len(class_names)} classes)")
            return str(class_names[label])

        gt = [DetectionRecord(name(int(lab)), relative_xywh(box, p.width, p.height))
              for box, lab in zip(p.gt_boxes, p.gt_labels, strict=True)]
        keep = np.flatnonzero(np.asarray(p.scores) >= conf)
        dets = [DetectionRecord(name(int(p.labels[i])), relative_xywh(p.boxes[i], p.width, p.height),
                                float(p.scores[i])) for i in keep]
        records.append(SampleRecord(str(p.path), p.width, p.height, p.image_id, gt, dets))
    return records


def require_fiftyone() -> Any:
    try:
        import fiftyone
    except ImportError as exc:
        raise DependencyError(
            f"FiftyOne is not installed ({exc}): pip install 'dfine[viz]' (it needs a MongoDB: "
            "the fiftyone-db package downloads one at install time, or set "
            "FIFTYONE_DATABASE_URI to your own)"
        ) from exc
    return fiftyone


def create_fiftyone_dataset(
    records: Sequence[SampleRecord], name: str, *, persistent: bool = True
) -> dict[str, Any]:
    """Write ``records`` to the FiftyOne dataset ``name`` (replacing one of that name) and
    evaluate it; returns ``{"name", "samples", "mAP"}``."""
    fo = require_fiftyone()
    try:
        dataset = fo.Dataset(name, overwrite=True)
    except Exception as exc:  # FiftyOne raises its own types when the database cannot start
        raise DependencyError(
            f"FiftyOne cannot open its database: {str(exc).splitlines()[0][:200]}"
        ) from exc
    dataset.persistent = persistent

    def detections(items: Sequence[DetectionRecord]) -> Any:
        return fo.Detections(detections=[
            fo.Detection(label=d.label, bounding_box=list(d.bounding_box),
                         **({} if d.confidence is None else {"confidence": d.confidence}))
            for d in items
        ])

    samples = []
    for r in records:
        sample = fo.Sample(filepath=r.filepath)
        sample[GT_FIELD] = detections(r.ground_truth)
        sample[PRED_FIELD] = detections(r.predictions)
        sample["image_id"] = r.image_id
        samples.append(sample)
    dataset.add_samples(samples)
    results = dataset.evaluate_detections(
        PRED_FIELD, gt_field=GT_FIELD, eval_key=EVAL_KEY, method="coco", compute_mAP=True
    )
    return {"name": dataset.name, "samples": len(dataset), "mAP": float(results.mAP())}


def launch(name: str) -> None:
    """Open the FiftyOne App on dataset ``name``, sorted by false positives; blocks until closed."""
    fo = require_fiftyone()
    dataset = fo.load_dataset(name)
    session = fo.launch_app(dataset.sort_by(f"{EVAL_KEY}_fp", reverse=True))
    session.wait()
