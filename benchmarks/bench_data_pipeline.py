"""Throughput of the training data pipeline (decode → augment → collate) per worker count.

Writes ``--images`` random 640×480 JPEGs with 1–10 boxes each into a temporary folder, then
runs one epoch of a DataLoader (``--batch`` images per batch) for each recipe and worker
count and prints images/s. The first batch (worker start-up) is not timed. Each recipe runs
at an epoch where all its augmentations are on: D-FINE epoch 0; DEIM epoch 10 (Mosaic and
mixup stage, Mosaic probability 0.5).

    python benchmarks/bench_data_pipeline.py
    python benchmarks/bench_data_pipeline.py --images 64 --workers 0 2

``--compare SRC`` measures this tree (A) against another copy of the package's ``src`` folder
(B, e.g. ``git archive HEAD src | tar -x -C /tmp/base``) on the same images, alternating
A, B, A, B, ... in fresh processes (``--rounds`` times) so that machine load hits both alike,
and prints the median images/s of each. OpenCV and torch run one thread per process, as in a
DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dfine_cli.data.dataset import CocoDetectionDataset
from dfine_cli.data.transforms import BatchCollator, TrainTransforms
from dfine_cli.engine.recipes import augment_preset


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
    images_dir: Path,
    ann_file: Path,
    recipe: str,
    epoch: int,
    workers: int,
    batch: int,
    cpu_rate: list[float] | None = None,
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
    start, cpu_start = time.perf_counter(), time.process_time()
    count = sum(images.shape[0] for images, _ in iterator)
    if cpu_rate is not None:  # images per second of this process's CPU time (workers=0)
        cpu_rate.append(count / max(time.process_time() - cpu_start, 1e-9))
    return count / (time.perf_counter() - start)


def _measure(
    images_dir: Path, ann_file: Path, workers: list[int], batch: int
) -> list[tuple[str, int, int, float, float]]:
    """Rows ``(recipe, epoch, workers, images/s, images per CPU-second or nan)``; the CPU
    figure (workers=0 only) is what one worker process delivers on a core of its own, and
    is far less disturbed by other load on the machine than the wall-clock rate."""
    rows = []
    for recipe, epoch in (("dfine", 0), ("deim", 10)):
        for count in workers:
            cpu: list[float] = []
            rate = images_per_second(
                images_dir, ann_file, recipe, epoch, count, batch, cpu if count == 0 else None
            )
            rows.append((recipe, epoch, count, rate, cpu[0] if cpu else float("nan")))
    return rows


def _compare(args: argparse.Namespace, images_dir: Path, ann_file: Path) -> None:
    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"A": here, "B": str(Path(args.compare).resolve())}
    rates: dict[tuple[str, str, int, int], list[tuple[float, float]]] = {}
    loads = []
    for _ in range(args.rounds):
        for name, src in trees.items():
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--machine",
                    str(images_dir),
                    str(ann_file),
                    "--batch",
                    str(args.batch),
                    "--workers",
                    *map(str, args.workers),
                ],
                env=dict(os.environ, PYTHONPATH=src),
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for line in out.splitlines():
                recipe, epoch, count, rate, cpu_rate = line.split()
                key = (name, recipe, int(epoch), int(count))
                rates.setdefault(key, []).append((float(rate), float(cpu_rate)))
            loads.append(os.getloadavg()[0])
    print(
        f"A = {trees['A']}, B = {trees['B']}; {args.rounds} rounds A/B; "
        f"1-min load average {min(loads):.2f}..{max(loads):.2f}"
    )
    print(
        f"{'recipe':<8} {'epoch':>5} {'workers':>7} {'A img/s':>9} {'B img/s':>9} {'A/B':>6}"
        f" {'A img/CPU-s':>12} {'B img/CPU-s':>12} {'A/B':>6}"
    )
    for (name, recipe, epoch, count), values in rates.items():
        if name != "A":
            continue
        other = rates[("B", recipe, epoch, count)]
        a, b = (statistics.median(v[0] for v in vs) for vs in (values, other))
        ca, cb = (statistics.median(v[1] for v in vs) for vs in (values, other))
        print(
            f"{recipe:<8} {epoch:>5} {count:>7} {a:9.1f} {b:9.1f} {a / b:6.2f}"
            f" {ca:12.1f} {cb:12.1f} {ca / cb:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--compare", metavar="SRC", help="another tree's src folder (A/B)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds of --compare")
    parser.add_argument(
        "--machine", nargs=2, metavar=("IMAGES", "ANNOTATIONS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    torch.set_num_threads(1)  # as in a DataLoader worker; keeps workers=0 comparable
    cv2.setNumThreads(1)
    if args.machine:
        for recipe, epoch, count, rate, cpu_rate in _measure(
            Path(args.machine[0]), Path(args.machine[1]), args.workers, args.batch
        ):
            print(recipe, epoch, count, f"{rate:.3f}", f"{cpu_rate:.3f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        images_dir, ann_file = write_dataset(Path(tmp), args.images)
        print(
            f"{args.images} JPEGs of 640x480, batch {args.batch}, torch threads in main process: 1"
        )
        if args.compare:
            _compare(args, images_dir, ann_file)
            return
        print(f"{'recipe':<8} {'epoch':>5} {'workers':>7} {'images/s':>9} {'img/CPU-s':>10}")
        for recipe, epoch, count, rate, cpu_rate in _measure(
            images_dir, ann_file, args.workers, args.batch
        ):
            print(f"{recipe:<8} {epoch:>5} {count:>7} {rate:9.1f} {cpu_rate:10.1f}")


if __name__ == "__main__":
    main()
