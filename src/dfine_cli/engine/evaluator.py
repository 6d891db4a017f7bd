"""COCO bounding-box evaluation: collect detections per image, score them with COCOeval.

Detections arrive as the postprocessor produces them (contiguous labels ``0..K-1``, ``xyxy``
boxes in original-image pixels, scores) and are stored per image id, already converted to
what COCO expects (dataset category ids, ``xywh`` boxes). :meth:`CocoEvaluator.compute`
runs COCOeval with one of two interchangeable backends:

- ``"faster"`` (default): `faster-coco-eval`, a C++ re-implementation of COCOeval.
- ``"pycocotools"``: the reference implementation.

Both give the same 12 summary numbers up to one unit in the last place: pycocotools computes
precision as ``tp / (tp + fp + eps)`` with ``eps = np.spacing(1)``, faster-coco-eval without
the epsilon, so a perfect-precision point is ``1 - 2.2e-16`` in one and ``1.0`` in the other.

Which images count
------------------
Only images passed to :meth:`CocoEvaluator.update` are evaluated (COCOeval ``imgIds``), as
the official D-FINE evaluator does; pass empty arrays for images without detections so that
their ground truth counts as missed. Each image id is kept once: a second update of an id
already stored is dropped (first wins). This is what makes distributed evaluation exact:
``DistributedSampler`` pads the last batch by repeating images, and those repeats must not
be counted twice. :meth:`CocoEvaluator.gather_and_merge` does the same across ranks.

All console output of the COCO libraries is captured and sent to the ``dfine.engine.evaluator``
logger at DEBUG level; nothing is printed.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dfine_cli.errors import DataError, DependencyError
from dfine_cli.fileio import atomic_open, write_json

logger = logging.getLogger("dfine.engine.evaluator")

Backend = Literal["faster", "pycocotools"]
BACKENDS: tuple[str, ...] = ("faster", "pycocotools")

#: Names of the 12 standard COCOeval bbox statistics, in COCOeval's order.
STAT_NAMES: tuple[str, ...] = (
    "AP",  # AP @ IoU 0.50:0.95, area all, maxDets 100
    "AP50",
    "AP75",
    "APs",  # small:  area < 32²
    "APm",  # medium: 32² <= area < 96²
    "APl",  # large:  area >= 96²
    "AR1",  # AR @ IoU 0.50:0.95 with 1 detection per image
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one dataset category (area ``all``, at most 100 detections per image).

    ``ap`` is AP averaged over IoU 0.50:0.95, ``ap50`` at IoU 0.50. ``precision`` and
    ``recall`` are the operating point of maximum F1 on the category's interpolated
    precision/recall curve at IoU 0.50 (COCOeval's 101 recall points, so recall is quantised
    to 0.01). Undefined values (the category has no ground truth in the evaluated images;
    COCOeval reports -1) are ``nan``.
    """

    category_id: int
    name: str
    label: int | None  # contiguous model label, None if the model has no such class
    num_gt: int  # non-crowd ground-truth boxes in the evaluated images
    ap: float
    ap50: float
    precision: float
    recall: float


@dataclass(frozen=True)
class EvalResult:
    """Outcome of one COCO bbox evaluation.

    ``stats`` maps :data:`STAT_NAMES` to values in ``[0, 1]``; an undefined statistic
    (e.g. ``APs`` without small objects; COCOeval's -1) is ``nan`` here and ``None`` in JSON.
    """

    stats: dict[str, float]
    per_class: list[ClassMetrics]
    num_images: int
    num_detections: int
    backend: str

    @property
    def ap(self) -> float:
        """COCO mAP @ IoU 0.50:0.95 (``stats["AP"]``)."""
        return self.stats["AP"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``nan`` values become ``None``."""
        return {
            "backend": self.backend,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "stats": {name: _json_number(value) for name, value in self.stats.items()},
            "per_class": [
                {
                    "category_id": c.category_id,
                    "name": c.name,
                    "label": c.label,
                    "num_gt": c.num_gt,
                    "AP": _json_number(c.ap),
                    "AP50": _json_number(c.ap50),
                    "precision": _json_number(c.precision),
                    "recall": _json_number(c.recall),
                }
                for c in self.per_class
            ],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` atomically."""
        write_json(path, self.to_json())

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the per-class table atomically, with a final ``all`` row.

        The ``all`` row holds the overall ``AP``/``AP50`` and the mean precision and recall of
        the classes where they are defined. Undefined values are empty cells.
        """
        defined = [c for c in self.per_class if not math.isnan(c.precision)]
        mean_p = float(np.mean([c.precision for c in defined])) if defined else math.nan
        mean_r = float(np.mean([c.recall for c in defined])) if defined else math.nan
        with atomic_open(path, "w") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(
                ["category_id", "label", "name", "num_gt", "AP", "AP50", "precision", "recall"]
            )
            for c in self.per_class:
                writer.writerow(
                    [
                        c.category_id,
                        "" if c.label is None else c.label,
                        c.name,
                        c.num_gt,
                        *(_csv_number(v) for v in (c.ap, c.ap50, c.precision, c.recall)),
                    ]
                )
            writer.writerow(
                [
                    "",
                    "",
                    "all",
                    sum(c.num_gt for c in self.per_class),
                    *(
                        _csv_number(v)
                        for v in (self.stats["AP"], self.stats["AP50"], mean_p, mean_r)
                    ),
                ]
            )


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


# --------------------------------------------------------------------------- ground truth


def load_ground_truth(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Read a COCO annotation file (or dict) into the minimal dict COCOeval needs.

    Only ``images`` (id, width, height), ``categories`` (id, name) and bbox ``annotations``
    (image_id, category_id, bbox, area, iscrowd) are kept, copied, so the caller's dict is
    never modified. Annotation ids are renumbered ``1..M`` in file order: COCOeval uses id 0
    as "unmatched", so a dataset with an annotation id 0 would otherwise lose that match.
    A missing ``area`` is taken as the box area.

    Raises:
        DataError: unreadable file, invalid JSON, missing keys or malformed boxes.
    """
    name = "ground truth"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        try:
            with open(source, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise DataError(f"annotation file not found: {name}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except OSError as exc:
            raise DataError(f"cannot read annotation file {name}: {exc.strerror}") from None
    else:
        data = source
    if not isinstance(data, Mapping) or "images" not in data or "categories" not in data:
        raise DataError(f"{name}: not a COCO annotation file (needs 'images' and 'categories')")
    try:
        images = [
            {
                "id": int(im["id"]),
                "width": int(im.get("width", 0)),
                "height": int(im.get("height", 0)),
            }
            for im in data["images"]
        ]
        categories = [
            {"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in data["categories"]
        ]
        annotations = []
        for number, ann in enumerate(data.get("annotations", []), start=1):
            x, y, w, h = (float(v) for v in ann["bbox"])
            annotations.append(
                {
                    "id": number,
                    "image_id": int(ann["image_id"]),
                    "category_id": int(ann["category_id"]),
                    "bbox": [x, y, w, h],
                    "area": float(ann["area"]) if "area" in ann else w * h,
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{name}: malformed image, category or annotation entry ({exc!r})"
        ) from None
    return {"images": images, "categories": categories, "annotations": annotations}


# --------------------------------------------------------------------------- evaluator


class CocoEvaluator:
    """Accumulates detections per image id and computes COCO bbox metrics.

    Args:
        ground_truth: COCO annotation file or an already loaded dict.
        label_to_category: ``label_to_category[label]`` is the dataset category id of the
            model's contiguous class ``label`` (see ``CocoDetectionDataset.label_to_category``).
        backend: ``"faster"`` (faster-coco-eval, default) or ``"pycocotools"``.

    Typical use, one evaluator per evaluation pass::

        evaluator = CocoEvaluator(ann_file, dataset.label_to_category)
        for images, targets in loader:
            labels, boxes, scores = postprocess(model(images), orig_sizes)
            evaluator.update([int(t["image_id"]) for t in targets], labels, boxes, scores)
        evaluator.gather_and_merge()     # every rank; no-op without torch.distributed
        result = evaluator.compute()     # on every rank, or only where it is needed
    """

    def __init__(
        self,
        ground_truth: Mapping[str, Any] | str | os.PathLike[str],
        label_to_category: Sequence[int],
        *,
        backend: Backend = "faster",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose from {BACKENDS}")
        self.backend: str = backend
        self._gt = load_ground_truth(ground_truth)
        self._gt_image_ids = {im["id"] for im in self._gt["images"]}
        self._category_names = {c["id"]: c["name"] for c in self._gt["categories"]}
        self.label_to_category = [int(c) for c in label_to_category]
        unknown = sorted(set(self.label_to_category) - set(self._category_names))
        if unknown:
            raise DataError(
                f"label_to_category names category ids absent from the ground truth: {unknown[:10]}"
            )
        self._label_lookup = np.asarray(self.label_to_category, dtype=np.int64)
        # image id -> float64 [n, 6]: x, y, w, h (pixels), score, category id
        self._detections: dict[int, np.ndarray] = {}

    # -- accumulation ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all accumulated detections."""
        self._detections = {}

    def __len__(self) -> int:
        return len(self._detections)

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images accumulated so far, sorted."""
        return sorted(self._detections)

    def update(
        self,
        image_ids: ArrayLike,
        labels: Iterable[ArrayLike],
        boxes: Iterable[ArrayLike],
        scores: Iterable[ArrayLike],
    ) -> None:
        """Add the detections of a batch of images.

        Args:
            image_ids: ``[B]`` dataset image ids (ints, 0-d tensors or a ``[B]`` tensor).
            labels: per image ``[N_i]`` contiguous labels in ``0..K-1`` (a ``[B, N]`` tensor
                or a list of ``[N_i]`` tensors/arrays).
            boxes: per image ``[N_i, 4]`` ``xyxy`` boxes in original-image pixels.
            scores: per image ``[N_i]`` confidence scores.

        An image id that is already stored is ignored (first wins), see the module docstring.

        Raises:
            DataError: an image id is not in the ground truth.
            ValueError: inconsistent shapes or a label outside ``0..K-1``.
        """
        ids = [int(i) for i in image_ids]
        try:
            per_image = list(zip(labels, boxes, scores, strict=True))
        except ValueError:
            raise ValueError("update got different numbers of label, box and score sets") from None
        if len(per_image) != len(ids):
            raise ValueError(
                f"update got {len(ids)} image ids but {len(per_image)} prediction sets"
            )
        for image_id, (lab, box, score) in zip(ids, per_image, strict=True):
            if image_id not in self._gt_image_ids:
                raise DataError(f"image id {image_id} is not in the ground-truth annotation file")
            if image_id in self._detections:
                logger.debug("image id %d already evaluated; duplicate dropped", image_id)
                continue
            self._detections[image_id] = self._to_coco_rows(lab, box, score)

    def _to_coco_rows(self, labels: ArrayLike, boxes: ArrayLike, scores: ArrayLike) -> np.ndarray:
        lab = _to_numpy(labels).astype(np.int64).reshape(-1)
        box = _to_numpy(boxes).astype(np.float64).reshape(-1, 4)
        score = _to_numpy(scores).astype(np.float64).reshape(-1)
        if not (len(lab) == len(box) == len(score)):
            raise ValueError(
                f"labels, boxes and scores disagree in length: {len(lab)}, {len(box)}, {len(score)}"
            )
        if len(lab) and (lab.min() < 0 or lab.max() >= len(self._label_lookup)):
            raise ValueError(
                f"labels must be in 0..{len(self._label_lookup) - 1}, got {lab.min()}..{lab.max()}"
            )
        rows = np.empty((len(lab), 6), dtype=np.float64)
        rows[:, 0:2] = box[:, 0:2]
        rows[:, 2:4] = box[:, 2:4] - box[:, 0:2]
        rows[:, 4] = score
        rows[:, 5] = self._label_lookup[lab]
        return rows

    def add_coco_results(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Add detections in the COCO results format (``image_id``, ``category_id``,
        ``bbox`` as ``xywh`` pixels, ``score``), e.g. a ``*_results.json`` file's content.

        Rows are grouped by image id; an image id already stored is dropped as in
        :meth:`update`. Category ids must exist in the ground truth.

        Raises:
            DataError: unknown image or category id, or a malformed row.
        """
        grouped: dict[int, list[list[float]]] = {}
        try:
            for row in results:
                x, y, w, h = (float(v) for v in row["bbox"])
                image_id, category_id = int(row["image_id"]), int(row["category_id"])
                if category_id not in self._category_names:
                    raise DataError(
                        f"detection has category id {category_id}, not in the ground truth"
                    )
                grouped.setdefault(image_id, []).append(
                    [x, y, w, h, float(row["score"]), category_id]
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed detection result row ({exc!r})") from None
        for image_id, rows in grouped.items():
            if image_id not in self._gt_image_ids:
                raise DataError(f"image id {image_id} is not in the ground-truth annotation file")
            if image_id not in self._detections:
                self._detections[image_id] = np.asarray(rows, dtype=np.float64).reshape(-1, 6)

    def gather_and_merge(self) -> None:
        """Merge the detections of all ranks so that every rank holds all of them.

        Collective: when ``torch.distributed`` is initialised, every rank must call it. Each
        rank's ``{image_id: detections}`` dict is exchanged with ``all_gather_object`` and
        merged by image id in rank order, first wins, so an image that several ranks
        evaluated (``DistributedSampler`` padding) counts exactly once. Without an
        initialised process group this does nothing.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world_size = torch.distributed.get_world_size()
        gathered: list[dict[int, np.ndarray] | None] = [None] * world_size
        torch.distributed.all_gather_object(gathered, self._detections)
        merged: dict[int, np.ndarray] = {}
        for part in gathered:
            for image_id, rows in (part or {}).items():
                merged.setdefault(image_id, rows)
        logger.debug(
            "merged detections of %d ranks: %d images (%d before de-duplication)",
            world_size,
            len(merged),
            sum(len(p or {}) for p in gathered),
        )
        self._detections = merged

    # -- evaluation --------------------------------------------------------------------

    def compute(self, image_ids: Sequence[int] | None = None) -> EvalResult:
        """Run COCOeval on the accumulated detections.

        Args:
            image_ids: images to evaluate; by default those passed to :meth:`update`.
                Images in this list without stored detections count with no detections.

        Raises:
            ValueError: there is no image to evaluate.
            DependencyError: the selected backend is not installed.
        """
        ids = sorted({int(i) for i in (self._detections if image_ids is None else image_ids)})
        if not ids:
            raise ValueError("no images to evaluate: call update() first")
        unknown = [i for i in ids if i not in self._gt_image_ids]
        if unknown:
            raise DataError(f"image id {unknown[0]} is not in the ground-truth annotation file")
        detections = _coco_detections(self._detections, ids)
        stats, precision, cat_ids, rec_thrs, iou_thrs = _run_cocoeval(
            self._gt, detections, ids, self.backend
        )
        return EvalResult(
            stats={name: _undefined_to_nan(v) for name, v in zip(STAT_NAMES, stats, strict=True)},
            per_class=self._per_class(precision, cat_ids, rec_thrs, iou_thrs, set(ids)),
            num_images=len(ids),
            num_detections=len(detections),
            backend=self.backend,
        )

    def _per_class(
        self,
        precision: np.ndarray,
        cat_ids: Sequence[int],
        rec_thrs: np.ndarray,
        iou_thrs: np.ndarray,
        image_ids: set[int],
    ) -> list[ClassMetrics]:
        # precision: [T iou thresholds, R recall points, K categories, A areas, M maxDets]
        t50 = int(np.flatnonzero(np.isclose(iou_thrs, 0.5))[0])
        num_gt: dict[int, int] = {}
        for ann in self._gt["annotations"]:
            if ann["image_id"] in image_ids and not ann["iscrowd"]:
                num_gt[ann["category_id"]] = num_gt.get(ann["category_id"], 0) + 1
        label_of = {cat: label for label, cat in enumerate(self.label_to_category)}
        metrics = []
        for k, cat_id in enumerate(cat_ids):
            curve = precision[:, :, k, 0, -1]
            curve50 = precision[t50, :, k, 0, -1]
            p, r = _max_f1_point(curve50, rec_thrs)
            metrics.append(
                ClassMetrics(
                    category_id=int(cat_id),
                    name=self._category_names[int(cat_id)],
                    label=label_of.get(int(cat_id)),
                    num_gt=num_gt.get(int(cat_id), 0),
                    ap=_mean_defined(curve),
                    ap50=_mean_defined(curve50),
                    precision=p,
                    recall=r,
                )
            )
        return metrics


def evaluate_results_file(
    ground_truth: Mapping[str, Any] | str | os.PathLike[str],
    results: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
    *,
    backend: Backend = "faster",
) -> EvalResult:
    """Evaluate a standard COCO results file against an annotation file.

    All ground-truth images are evaluated (as the cocoapi demo does), whether or not they
    have detections. Model labels are taken as the ground-truth category ids in sorted order.

    Raises:
        DataError: unreadable files or ids absent from the ground truth.
    """
    gt = load_ground_truth(ground_truth)
    if isinstance(results, (str, os.PathLike)):
        try:
            rows = json.loads(Path(results).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"results file not found: {results}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{results}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise DataError(f"{results}: a COCO results file is a JSON list of detections")
    else:
        rows = results
    evaluator = CocoEvaluator(gt, sorted(c["id"] for c in gt["categories"]), backend=backend)
    evaluator.add_coco_results(rows)
    return evaluator.compute(image_ids=[im["id"] for im in gt["images"]])


# --------------------------------------------------------------------------- helpers


def _to_numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _undefined_to_nan(value: float) -> float:
    value = float(value)
    return math.nan if value < 0 else value


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else math.nan


def _max_f1_point(precision: np.ndarray, recall: np.ndarray) -> tuple[float, float]:
    """(precision, recall) at the maximum of F1 = 2PR/(P+R) on an interpolated PR curve.

    Args:
        precision: ``[R]`` interpolated precision at the recall points (-1 when undefined).
        recall: ``[R]`` recall points (COCOeval ``recThrs``, 0.00..1.00).
    """
    if not (precision > -1).any():
        return math.nan, math.nan
    total = precision + recall
    f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return 0.0, 0.0
    return float(precision[best]), float(recall[best])


def _coco_detections(
    detections: Mapping[int, np.ndarray], image_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result annotations (what ``COCO.loadRes`` would build) for ``image_ids``."""
    annotations: list[dict[str, Any]] = []
    for image_id in image_ids:
        rows = detections.get(image_id)
        if rows is None or not len(rows):
            continue
        boxes = rows[:, :4].tolist()
        areas = (rows[:, 2] * rows[:, 3]).tolist()
        scores = rows[:, 4].tolist()
        categories = rows[:, 5].astype(np.int64).tolist()
        first_id = len(annotations) + 1
        annotations.extend(
            {
                "id": first_id + i,
                "image_id": image_id,
                "category_id": category,
                "bbox": box,
                "score": score,
                "area": area,
                "iscrowd": 0,
            }
            for i, (box, score, area, category) in enumerate(
                zip(boxes, scores, areas, categories, strict=True)
            )
        )
    return annotations


def _import_backend(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"COCO evaluation needs the '{package}' package: pip install {package}  ({exc})"
        ) from exc


@contextlib.contextmanager
def _captured_stdout() -> Iterator[None]:
    """Send whatever the COCO libraries print to the DEBUG log instead of stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("%s", line)


def _run_cocoeval(
    gt: dict[str, Any], detections: list[dict[str, Any]], image_ids: list[int], backend: str
) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray, np.ndarray]:
    """Run evaluate/accumulate/summarize; return (12 stats, precision array, category ids,
    recall points, IoU thresholds)."""
    results_dataset = {
        "images": gt["images"],
        "categories": gt["categories"],
        "annotations": detections,
    }
    with _captured_stdout():
        if backend == "faster":
            fce = _import_backend("faster_coco_eval", "faster-coco-eval")
            coco_gt = fce.COCO(print_function=logger.debug)
            coco_dt = fce.COCO(print_function=logger.debug)
            coco_gt.dataset, coco_dt.dataset = gt, results_dataset
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluation = fce.COCOeval_faster(
                coco_gt, coco_dt, iouType="bbox", print_function=logger.debug
            )
        else:
            coco_api = _import_backend("pycocotools.coco", "pycocotools")
            cocoeval_api = _import_backend("pycocotools.cocoeval", "pycocotools")
            coco_gt = coco_api.COCO()
            coco_dt = coco_api.COCO()
            coco_gt.dataset, coco_dt.dataset = gt, results_dataset
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluation = cocoeval_api.COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    params = evaluation.params
    return (
        np.asarray(evaluation.stats[: len(STAT_NAMES)], dtype=np.float64),
        np.asarray(evaluation.eval["precision"]),
        [int(c) for c in params.catIds],
        np.asarray(params.recThrs),
        np.asarray(params.iouThrs),
    )
