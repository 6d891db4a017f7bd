"""The training pipeline's augmentation statistics are those of the torchvision-only pipeline.

The reference path is the pipeline as it was built from torchvision alone: JPEGs decoded by
``torchvision.io.decode_image``, ``v2.RandomPhotometricDistort`` and ``v2.RandomIoUCrop``.
Both paths draw many samples of each recipe (D-FINE at epoch 0, DEIM at a Mosaic epoch) with
the same seeds; the statistics of boxes, colours and sizes must agree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

import dfine_cli.data.dataset as dataset_module
from dfine_cli.data.dataset import CocoDetectionDataset
from dfine_cli.data.transforms import TrainTransforms
from dfine_cli.engine.recipes import DEIM_MOSAIC, augment_preset

NUM_IMAGES = 16
SAMPLES = 48  # each image drawn three times (three epochs' worth of seeds)


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        height, width = int(rng.integers(90, 140)), int(rng.integers(120, 180))
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 1.2, yy * 1.5, (xx + yy) * 0.6], axis=-1) + rng.integers(0, 60, 3)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": width, "height": height})
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                    "iscrowd": 0,
                }
            )
    ann = root / "instances.json"
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    ann.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root, ann


def _torchvision_read_image(path) -> tv_tensors.Image:
    return tv_tensors.Image(decode_image(str(path), mode=ImageReadMode.RGB))


def _draw(dataset: CocoDetectionDataset, epochs: range) -> list[tuple[torch.Tensor, torch.Tensor]]:
    samples = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            image, target = dataset[i]
            samples.append((image.float() / 255, target["boxes"]))  # as collate converts
    return samples


def _statistics(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
    boxes = torch.cat([b for _, b in samples])
    pixels = torch.stack([img.flatten(1).mean(1) for img, _ in samples])
    spread = torch.stack([img.flatten(1).std(1) for img, _ in samples])
    return {
        "boxes_per_image": np.array([len(b) for _, b in samples], dtype=float),
        "box_cxcywh_mean": boxes.mean(0).numpy(),
        "box_cxcywh_std": boxes.std(0).numpy(),
        "colour_mean": pixels.mean(0).numpy(),
        "colour_std": spread.mean(0).numpy(),
        "image_sizes": np.array([img.shape[-2:] for img, _ in samples], dtype=float),
    }


@pytest.mark.parametrize(
    ("recipe", "epochs"),
    [("dfine", range(0, 3)), ("deim", range(10, 13))],  # DEIM 10..12: Mosaic and all ops on
)
def test_pipeline_statistics_equal_torchvision_pipeline(jpeg_dataset, monkeypatch, recipe, epochs):
    images_dir, ann = jpeg_dataset
    overrides = (
        {"mosaic": dataclasses.replace(DEIM_MOSAIC, output_size=64)} if recipe == "deim" else {}
    )
    config = augment_preset(recipe, "s", img_size=96, **overrides)

    new = _draw(CocoDetectionDataset(images_dir, ann, TrainTransforms(config, seed=5)), epochs)

    reference_transforms = TrainTransforms(config, seed=5)
    reference_transforms._photometric = v2.RandomPhotometricDistort(p=config.photometric_p)
    reference_transforms._iou_crop = v2.RandomApply([v2.RandomIoUCrop()], p=config.iou_crop_p)
    monkeypatch.setattr(dataset_module, "read_image", _torchvision_read_image)
    reference = _draw(CocoDetectionDataset(images_dir, ann, reference_transforms), epochs)

    assert len(new) == len(reference) == SAMPLES
    stats_new, stats_ref = _statistics(new), _statistics(reference)
    np.testing.assert_array_equal(stats_new["boxes_per_image"], stats_ref["boxes_per_image"])
    np.testing.assert_array_equal(stats_new["image_sizes"], stats_ref["image_sizes"])
    for key in ("box_cxcywh_mean", "box_cxcywh_std"):
        np.testing.assert_allclose(stats_new[key], stats_ref[key], rtol=0, atol=1e-6, err_msg=key)
    for key in ("colour_mean", "colour_std"):  # float rounding in the hue shift: <= 1/255 a pixel
        np.testing.assert_allclose(stats_new[key], stats_ref[key], rtol=0, atol=1e-3, err_msg=key)
    # the augmentations did vary the samples
    assert stats_ref["boxes_per_image"].std() > 0 and stats_ref["colour_mean"].min() > 0
