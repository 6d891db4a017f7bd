"""Benchmark the Objects365 preparation tools.

- ``resize-obj365`` throughput (images/s) with 1 and 2 worker processes on photo-sized JPEGs
  (1024×768, the typical Objects365 size, resized to a 640 longest side), and the rerun speed when
  every image is already finished;
- peak memory of ``remap-obj365`` on a synthetic Objects365 pair with 500k training
  annotations, measured in a fresh process as its resident high-water mark (Linux VmHWM) and,
  in a second run, as tracemalloc's peak of Python allocations; next to an official-style run
  that ``json.load``\\ s both files.

Usage::

    python benchmarks/bench_data_tools.py [--images 96] [--annotations 500000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dfine_cli.data.obj365 import TRAIN_JSON, VAL_JSON
from dfine_cli.data.obj365.resize import resize_coco_images


def make_photos(folder: Path, count: int, size: tuple[int, int] = (1024, 768)) -> Path:
    """Photo-like JPEGs (smooth colour fields plus sensor-like noise) and their COCO file."""
    rng = np.random.default_rng(0)
    width, height = size
    images, annotations = [], []
    for i in range(count):
        coarse = rng.integers(0, 255, (height // 32, width // 32, 3), dtype=np.uint8)
        smooth = np.asarray(
            Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.int16
        )
        noisy = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
        name = f"images/v1/patch{i % 4}/objects365_v1_{i:08d}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(folder / name, quality=90)
        images.append({"height": height, "id": i, "license": 1, "width": width, "file_name": name})
        for k in range(10):
            annotations.append(
                {
                    "id": i * 10 + k,
                    "iscrowd": 0,
                    "area": 1500.0,
                    "bbox": [10.0 * k, 20.0, 50.0, 30.0],
                    "image_id": i,
                    "category_id": 1 + k,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 11)],
    }
    source = folder / "new_zhiyuan_objv2_train.json"
    source.write_text(json.dumps(coco))
    return source


def bench_resize(workdir: Path, count: int) -> list[tuple[str, float]]:
    pristine = workdir / "photos"
    source = make_photos(pristine, count)
    rows = []
    for workers in (1, 2):
        run_dir = workdir / f"resize_w{workers}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(pristine, run_dir)
        start = time.perf_counter()
        summary = resize_coco_images(
            run_dir / source.name, run_dir, run_dir / "out.json", max_size=640, workers=workers
        )
        elapsed = time.perf_counter() - start
        assert summary.written and summary.resized == count
        rows.append(
            (f"resize-obj365, {workers} worker(s), {count} images 1024x768 → 640", count / elapsed)
        )
        if workers == 2:
            start = time.perf_counter()
            summary = resize_coco_images(
                run_dir / source.name, run_dir, run_dir / "out.json", max_size=640, workers=workers
            )
            elapsed = time.perf_counter() - start
            assert summary.reused == count
            rows.append(
                (f"resize-obj365 rerun, all finished, {workers} worker(s)", count / elapsed)
            )
    return rows


def make_remap_input(base: Path, annotations: int) -> int:
    """Objects365-shaped train/val JSON files (no image files: remap runs with copy off)."""
    rng = np.random.default_rng(0)
    per_image = 10
    train_images = annotations // per_image

    def coco(first_image: int, n_images: int, first_ann: int) -> dict:
        images = [
            {
                "height": 480,
                "id": first_image + i,
                "license": 1,
                "width": 640,
                "file_name": f"images/v1/patch{i % 50}/objects365_v1_{first_image + i:08d}.jpg",
            }
            for i in range(n_images)
        ]
        boxes = rng.uniform(0, 300, size=(n_images * per_image, 4)).round(2).tolist()
        anns = [
            {
                "id": first_ann + j,
                "iscrowd": 0,
                "isfake": 0,
                "area": round(b[2] * b[3], 2),
                "isreflected": 0,
                "bbox": b,
                "image_id": first_image + j // per_image,
                "category_id": 1 + j % 365,
            }
            for j, b in enumerate(boxes)
        ]
        cats = [{"name": f"class{c}", "id": c} for c in range(1, 366)]
        return {
            "images": images,
            "annotations": anns,
            "categories": cats,
            "licenses": [{"name": "x", "id": 1}],
        }

    (base / "train").mkdir(parents=True, exist_ok=True)
    (base / "val").mkdir(parents=True, exist_ok=True)
    (base / "train" / TRAIN_JSON).write_text(json.dumps(coco(0, train_images, 0)))
    (base / "val" / VAL_JSON).write_text(json.dumps(coco(10**7, 6000, 10**8)))
    return (base / "train" / TRAIN_JSON).stat().st_size + (base / "val" / VAL_JSON).stat().st_size


_REMAP_CHILD = """
import json, sys, tracemalloc
from pathlib import Path
base, mode, trace = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "trace"
import dfine_cli.data.obj365 as obj365
from dfine_cli.data.obj365.remap import remap_obj365

def high_water_mb():
    # VmHWM covers this process image only; ru_maxrss would also count the parent's memory at
    # fork time, which Linux carries over exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

before = high_water_mb()
if trace:
    tracemalloc.start()
if mode == "dfine":
    remap_obj365(base, new_val_size=5000, copy_images=False)
else:  # what the official script holds: both files parsed whole, then dumped
    train = json.load(open(base / "train" / obj365.TRAIN_JSON))
    val = json.load(open(base / "val" / obj365.VAL_JSON))
    keep = {im["id"] for im in val["images"][:5000]}
    out = {"images": [im for im in val["images"] if im["id"] not in keep] + train["images"],
           "annotations": [a for a in val["annotations"] if a["image_id"] not in keep] + train["annotations"],
           "categories": train["categories"]}
    json.dump(out, open(base / "train" / "official_style.json", "w"))
traced = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
print(json.dumps({"before_mb": before, "peak_mb": high_water_mb(), "traced_mb": traced}))
"""


def _remap_child(base: Path, mode: str, trace: bool) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _REMAP_CHILD, str(base), mode, "trace" if trace else "rss"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout), time.perf_counter() - start


def bench_remap(workdir: Path, annotations: int) -> list[tuple[str, float]]:
    base = workdir / "remap"
    size = make_remap_input(base, annotations)
    rows = [(f"remap input JSON size, MB ({annotations} train annotations)", size / 2**20)]
    for mode in ("dfine", "official-style"):
        stats, elapsed = _remap_child(base, mode, trace=False)
        traced, _ = _remap_child(base, mode, trace=True)
        rows.append(
            (
                f"remap {mode}: peak RSS (VmHWM), MB (imports alone: {stats['before_mb']:.0f})",
                stats["peak_mb"],
            )
        )
        rows.append((f"remap {mode}: tracemalloc peak, MB", traced["traced_mb"]))
        rows.append((f"remap {mode}: wall time incl. interpreter start, s", elapsed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=96, help="images for the resize benchmark")
    parser.add_argument(
        "--annotations", type=int, default=500_000, help="training annotations for remap"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dfine_bench_data_"))
    try:
        rows = bench_resize(workdir, args.images) + bench_remap(workdir, args.annotations)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        unit = "images/s" if "resize" in name else ""
        print(f"{name:<{width}}  {value:10.1f} {unit}")


if __name__ == "__main__":
    main()
