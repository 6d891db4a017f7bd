"""Time COCO bbox evaluation with faster-coco-eval and pycocotools on a synthetic set.

The ground truth has ``--images`` 640×480 images with 1–15 boxes each over 80 categories; the
detections are, per image, a jittered copy of every ground-truth box (some with the wrong
class) plus random false positives, ``--dets`` in all, with random scores. Both backends run
through :class:`dfine_cli.engine.evaluator.CocoEvaluator`, as training does.

    python benchmarks/bench_evaluator.py                 # 5,000 images × 100 detections
    python benchmarks/bench_evaluator.py --images 500    # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dfine_cli.engine.evaluator import BACKENDS, CocoEvaluator


def synthetic_ground_truth(num_images: int, num_classes: int, rng: np.random.Generator) -> dict:
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(1, 16))):
            w, h = rng.uniform(8, 300), rng.uniform(8, 300)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, num_classes + 1)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def synthetic_detections(
    gt: dict, dets_per_image: int, num_classes: int, rng: np.random.Generator
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image id: (labels [N], xyxy boxes [N, 4], scores [N])."""
    per_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    out = {}
    for image in gt["images"]:
        anns = per_image.get(image["id"], [])
        xywh = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        xywh = xywh + rng.normal(0, 0.05, xywh.shape) * xywh[:, [2, 3, 2, 3]]
        labels = np.array([a["category_id"] - 1 for a in anns], dtype=np.int64)
        wrong = rng.random(len(labels)) < 0.2
        labels[wrong] = rng.integers(0, num_classes, int(wrong.sum()))
        extra = max(dets_per_image - len(anns), 0)
        wh = rng.uniform(8, 200, (extra, 2))
        xy = rng.uniform(0, 1, (extra, 2)) * (np.array([640, 480]) - wh)
        xywh = np.concatenate([xywh, np.concatenate([xy, wh], axis=1)])
        labels = np.concatenate([labels, rng.integers(0, num_classes, extra)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(anns)), rng.uniform(0.0, 0.6, extra)])
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out[image["id"]] = (labels, xyxy, scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    gt = synthetic_ground_truth(args.images, args.classes, rng)
    detections = synthetic_detections(gt, args.dets, args.classes, rng)
    label_to_category = list(range(1, args.classes + 1))
    num_dets = sum(len(d[0]) for d in detections.values())
    print(
        f"synthetic set: {args.images} images, {len(gt['annotations'])} GT boxes, "
        f"{num_dets} detections, {args.classes} classes"
    )
    print(f"{'backend':<12} {'update s':>9} {'compute s':>10} {'AP':>8} {'AP50':>8}")
    for backend in BACKENDS:
        evaluator = CocoEvaluator(gt, label_to_category, backend=backend)
        start = time.perf_counter()
        for image_id, (labels, boxes, scores) in detections.items():
            evaluator.update([image_id], [labels], [boxes], [scores])
        updated = time.perf_counter()
        result = evaluator.compute()
        done = time.perf_counter()
        print(
            f"{backend:<12} {updated - start:9.2f} {done - updated:10.2f} "
            f"{result.stats['AP']:8.4f} {result.stats['AP50']:8.4f}"
        )


if __name__ == "__main__":
    main()
