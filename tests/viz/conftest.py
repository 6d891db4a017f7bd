"""A small dataset and predictions made from its ground truth (some right, some wrong)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    from dfine_cli.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_synthetic_dataset(root, num_images=30, num_classes=3, img_size=256)
    return root


@pytest.fixture(scope="session")
def fake_predictions(shapes_dataset):
    """Per val image: every ground-truth box found (jittered), one missed on odd images, one
    wrong-class duplicate and one background box; scores descending."""
    from dfine_cli.engine.evaluate import ImagePrediction, open_split

    dataset = open_split(shapes_dataset, "val")
    rng = np.random.default_rng(0)
    out = []
    for i in range(len(dataset)):
        image, target = dataset.load_item(i)
        gt_boxes = target["boxes"].numpy().astype(np.float32).reshape(-1, 4)
        gt_labels = target["labels"].numpy()
        keep = np.arange(len(gt_boxes)) if i % 2 == 0 else np.arange(1, len(gt_boxes))
        boxes = [gt_boxes[k] + rng.uniform(-2, 2, 4).astype(np.float32) for k in keep]
        labels = [int(gt_labels[k]) for k in keep]
        if len(gt_boxes):
            boxes.append(gt_boxes[0] + 1)
            labels.append((int(gt_labels[0]) + 1) % 3)
        boxes.append(np.array([0, 0, 30, 30], np.float32))
        labels.append(i % 3)
        scores = np.linspace(0.95, 0.3, len(boxes)).astype(np.float32)
        out.append(ImagePrediction(
            image_id=int(target["image_id"]), path=dataset.image_path(i),
            width=int(image.shape[-1]), height=int(image.shape[-2]),
            gt_boxes=gt_boxes, gt_labels=gt_labels,
            boxes=np.stack(boxes).astype(np.float32), labels=np.array(labels, np.int64),
            scores=scores,
        ))
    return dataset, out
