"""Cost of the image check ``dfine train`` runs before its first step (and ``dfine data validate``).

Times :func:`dfine_cli.data.validate.validate_coco` (the one code path both commands use) over
every JPEG of a folder, full decode vs headers only, with 1 and N worker processes, and prints
seconds per 1,000 images. Default folder: the BCCD images of ../shared (640×480 JPEGs); without
them, ``--count`` synthesized 640×480 photo-like JPEGs.

    python benchmarks/bench_image_check.py [--folder DIR] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dfine_cli.data.validate import validate_coco

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


def synthesize(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.BILINEAR), dtype=np.int16)
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:06d}.jpg", quality=90)
    return folder


def coco_of(folder: Path) -> dict[str, object]:
    images = []
    for i, path in enumerate(sorted(folder.rglob("*.jpg"))):
        with Image.open(path) as img:
            width, height = img.size
        images.append({"id": i, "file_name": str(path.relative_to(folder)), "width": width, "height": height})
    return {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=None, help="folder of JPEGs (default: BCCD)")
    parser.add_argument("--count", type=int, default=300, help="images to synthesize without a folder")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the second run")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs (warm file cache)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or (BCCD if BCCD.is_dir() else synthesize(Path(tmp), args.count))
        data = coco_of(folder)
        n = len(data["images"])  # type: ignore[arg-type]
        print(f"{n} images in {folder}")
        for decode in (True, False):
            for workers in sorted({1, args.workers}):
                best = float("inf")
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    report = validate_coco(data, folder, decode=decode, workers=workers)
                    best = min(best, time.perf_counter() - start)
                assert report.ok, report.issues
                mode = "full decode " if decode else "headers only"
                print(f"{mode}  workers={workers}: {best / n * 1000:6.2f} s per 1,000 images")


if __name__ == "__main__":
    main()
