"""Throughput of the training data pipeline (decode → augment → collate) per worker count.

Writes ``--images`` random 640×480 JPEGs with 1–10 boxes each into a temporary folder, then
runs one epoch of a DataLoader (``--batch`` images per batch) for each recipe and worker
count and prints images/s. The first batch (worker start-up) is not timed. Each recipe runs
at an epoch where all its augmentations are on: D-FINE epoch 0; DEIM epoch 10 (Mosaic and
mixup stage, Mosaic probability 0.5).

    python benchmarks/bench_data_pipeline.py
    python benchmarks/bench_data_pipeline.py --images 64 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dfine_cli.data.dataset import CocoDetectionDataset
from dfine_cli.data.transforms import BatchCollator, TrainTransforms, augment_preset


def write_dataset(root: Path, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir()
    images, annotations = [], []
    for i in range(num_images):
        # Smooth colour gradients plus noise: compresses like a photo, not like pure noise.
        yy, xx = np.mgrid[0:480, 0:640]
        base = np.stack([xx * 0.3, yy * 0.4, (xx + yy) * 0.2], axis=-1) + rng.integers(0, 60, 3)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images_dir / f"{i:05d}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i:05d}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(1, 11))):
            w, h = rng.uniform(16, 320), rng.uniform(16, 240)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, 81)),
                    "bbox": [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h],
                    "iscrowd": 0,
                }
            )
    ann_file = root / "instances.json"
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    ann_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return images_dir, ann_file


def images_per_second(
    images_dir: Path, ann_file: Path, recipe: str, epoch: int, workers: int, batch: int
) -> float:
    config = augment_preset(recipe, "s")
    dataset = CocoDetectionDataset(images_dir, ann_file, TrainTransforms(config, seed=0))
    collator = BatchCollator.from_config(config, seed=0)
    dataset.set_epoch(epoch)
    collator.set_epoch(epoch)
    loader = DataLoader(
        dataset, batch_size=batch, num_workers=workers, collate_fn=collator, drop_last=True
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up and first batch
    start = time.perf_counter()
    count = sum(images.shape[0] for images, _ in iterator)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    torch.set_num_threads(1)  # as in a DataLoader worker; keeps workers=0 comparable
    with tempfile.TemporaryDirectory() as tmp:
        images_dir, ann_file = write_dataset(Path(tmp), args.images)
        print(
            f"{args.images} JPEGs of 640x480, batch {args.batch}, torch threads in main process: 1"
        )
        print(f"{'recipe':<8} {'epoch':>5} {'workers':>7} {'images/s':>9}")
        for recipe, epoch in (("dfine", 0), ("deim", 10)):
            for workers in args.workers:
                rate = images_per_second(images_dir, ann_file, recipe, epoch, workers, args.batch)
                print(f"{recipe:<8} {epoch:>5} {workers:>7} {rate:9.1f}")


if __name__ == "__main__":
    main()
