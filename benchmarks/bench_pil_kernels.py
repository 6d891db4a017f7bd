"""The training pipeline's image kernels against the same transforms on PIL images.

The official implementation decodes with Pillow and runs torchvision's transforms on PIL
images (Pillow's resampling and ``ImageEnhance`` kernels); dfine decodes with OpenCV and runs
them on ``uint8`` tensors (torchvision's tensor kernels, OpenCV's HSV conversion for the hue).
This prints, on the images of a folder (default: BCCD's JPEGs in ``../shared``):

1. every kernel with fixed parameters, dfine's against Pillow's: mean absolute difference in
   grey levels (0..255), the ratio of the per-image pixel standard deviations and the
   difference of the means;
2. the whole training pipeline (PhotometricDistort, ZoomOut, IoUCrop, flip, resize to
   ``--img-size``; the VOC boxes of each image), ``--draws`` samples per image, for several
   ``--seeds``: mean pixel, mean and median per-image pixel standard deviation, boxes per
   image, for the official transforms on PIL images and for dfine's ``TrainTransforms``.

    python benchmarks/bench_pil_kernels.py
    python benchmarks/bench_pil_kernels.py --images 200 --draws 8 --seeds 0 1 2

The median per-image standard deviation is reported because it is easy to misread: a
zoomed-out sample (half of them) sits on a black canvas and has about twice the spread of
one that is not, so that median falls between two clusters and jumps between them from one
seed to the next in either pipeline; compare the means.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dfine_cli.data.convert import _parse_xml, _voc_box
from dfine_cli.data.dataset import read_image
from dfine_cli.data.fast_augment import adjust_hue_uint8
from dfine_cli.data.transforms import AugmentConfig, TrainTransforms
from dfine_cli.errors import DataError

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd" / "BCCD" / "JPEGImages"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def voc_boxes(image_path: Path) -> list[list[float]]:
    """``xyxy`` boxes of the VOC annotation next to ``JPEGImages``, read as ``dfine data convert``
    reads them (none if it is missing or unreadable)."""
    root = _parse_xml(image_path.parent.parent / "Annotations" / (image_path.stem + ".xml"))
    boxes = [_voc_box(obj) for obj in root.iter("object")] if root is not None else []
    return [[x, y, x + w, y + h] for x, y, w, h in (b for b in boxes if b is not None)]


def compare_kernels(paths: list[Path], img_size: int) -> list[tuple[str, float, float, float]]:
    """``(kernel, mean |difference| in grey levels, std ratio, mean difference)`` per kernel."""
    ops: dict[str, Callable[[torch.Tensor, Image.Image], tuple[torch.Tensor, torch.Tensor]]] = {
        "decode": lambda t, p: (t, F.pil_to_tensor(p)),
        "brightness 1.1": lambda t, p: (F.adjust_brightness(t, 1.1), F.pil_to_tensor(F.adjust_brightness(p, 1.1))),
        "contrast 0.6": lambda t, p: (F.adjust_contrast(t, 0.6), F.pil_to_tensor(F.adjust_contrast(p, 0.6))),
        "contrast 1.4": lambda t, p: (F.adjust_contrast(t, 1.4), F.pil_to_tensor(F.adjust_contrast(p, 1.4))),
        "saturation 1.4": lambda t, p: (F.adjust_saturation(t, 1.4), F.pil_to_tensor(F.adjust_saturation(p, 1.4))),
        "hue +0.04": lambda t, p: (adjust_hue_uint8(t, 0.04), F.pil_to_tensor(F.adjust_hue(p, 0.04))),
    }
    for zoom in (1.0, 2.0, 4.0):
        ops[f"zoom-out x{zoom:g} + resize {img_size}"] = _zoom_resize(zoom, img_size)
    diffs: dict[str, list[float]] = {name: [] for name in ops}
    ratios: dict[str, list[float]] = {name: [] for name in ops}
    shifts: dict[str, list[float]] = {name: [] for name in ops}
    for path in paths:
        pil = Image.open(path).convert("RGB")
        tensor = read_image(path).as_subclass(torch.Tensor)
        for name, op in ops.items():
            ours, theirs = op(tensor, pil)
            a, b = ours.float(), theirs.float()
            diffs[name].append(float((a - b).abs().mean()))
            ratios[name].append(float(a.std() / b.std()))
            shifts[name].append(float(a.mean() - b.mean()))
    rows = [(name, statistics.fmean(diffs[name]), statistics.fmean(ratios[name]),
             statistics.fmean(shifts[name])) for name in ops]
    return rows


def _zoom_resize(zoom: float, size: int) -> Callable[[torch.Tensor, Image.Image], tuple[torch.Tensor, torch.Tensor]]:
    """The image on a black canvas ``zoom`` times its size (top-left), resized to ``size``²."""
    def op(tensor: torch.Tensor, pil: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = tensor.shape[-2:]
        canvas = torch.zeros(3, int(height * zoom), int(width * zoom), dtype=torch.uint8)
        canvas[:, :height, :width] = tensor
        pil_canvas = Image.new("RGB", (canvas.shape[-1], canvas.shape[-2]))
        pil_canvas.paste(pil, (0, 0))
        ours = F.resize(tv_tensors.Image(canvas), [size, size]).as_subclass(torch.Tensor)
        return ours, F.pil_to_tensor(F.resize(pil_canvas, [size, size]))
    return op


def pipeline_stats(paths: list[Path], img_size: int, draws: int, seed: int) -> dict[str, dict[str, float]]:
    """Sample statistics of the official transforms on PIL images and of ``TrainTransforms``."""
    official = v2.Compose([
        v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=0),
        v2.RandomApply([v2.RandomIoUCrop()], p=0.8),  # the official RandomIoUCrop(p=0.8)
        v2.SanitizeBoundingBoxes(min_size=1), v2.RandomHorizontalFlip(),
        v2.Resize([img_size, img_size]), v2.SanitizeBoundingBoxes(min_size=1),
    ])
    ours = TrainTransforms(AugmentConfig(img_size=img_size, policy_epochs=(1,), base_size_repeat=None))
    samples: dict[str, list[tuple[float, float, int]]] = {"official (PIL)": [], "dfine (tensor)": []}
    inputs = []  # decoded once: (PIL image, tensor, xyxy boxes)
    for path in paths:
        boxes = torch.tensor(voc_boxes(path), dtype=torch.float32).reshape(-1, 4)
        inputs.append((Image.open(path).convert("RGB"), read_image(path), boxes))
    torch.manual_seed(seed)
    for _ in range(draws):
        for index, (pil, tensor, boxes) in enumerate(inputs):
            labels = torch.zeros(len(boxes), dtype=torch.int64)
            target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(pil.height, pil.width)),
                      "labels": labels}
            image, out = official(pil, target)
            pixels = F.pil_to_tensor(image).float() / 255
            samples["official (PIL)"].append((float(pixels.mean()), float(pixels.std()), len(out["boxes"])))
            target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(tensor.shape[-2:])),
                      "labels": labels, "idx": torch.tensor(index)}
            image, out = ours(tensor, target)
            pixels = image.float() / 255
            samples["dfine (tensor)"].append((float(pixels.mean()), float(pixels.std()), len(out["boxes"])))
    stats = {}
    for name, rows in samples.items():
        values = np.array(rows, dtype=np.float64)
        stats[name] = {"mean_pixel": float(values[:, 0].mean()), "mean_std": float(values[:, 1].mean()),
                       "median_std": float(np.median(values[:, 1])), "boxes": float(values[:, 2].mean()),
                       "samples": len(values)}
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-dir", type=Path, default=DEFAULT_IMAGES, help="JPEG folder (VOC layout for boxes)")
    parser.add_argument("--images", type=int, default=120, help="first N images of the folder")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--draws", type=int, default=6, help="pipeline samples per image and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    paths = sorted(args.images_dir.glob("*.jpg"))[: args.images]
    if not paths:
        log(f"error: no .jpg images in {args.images_dir} (pass --images-dir)")
        return 3
    torch.set_num_threads(1)
    log(f"{len(paths)} images from {args.images_dir}")
    try:
        kernels = compare_kernels(paths, args.img_size)
        print("kernel\tmean |diff| (grey levels)\tstd ratio\tmean diff (grey levels)")
        for name, diff, ratio, shift in kernels:
            print(f"{name}\t{diff:.3f}\t{ratio:.4f}\t{shift:+.3f}")
        print()
        print("seed\tpipeline\tmean pixel\tmean per-image std\tmedian per-image std\tboxes/image\tsamples")
        for seed in args.seeds:
            for name, s in pipeline_stats(paths, args.img_size, args.draws, seed).items():
                print(f"{seed}\t{name}\t{s['mean_pixel']:.4f}\t{s['mean_std']:.4f}\t{s['median_std']:.4f}"
                      f"\t{s['boxes']:.2f}\t{s['samples']}")
    except (DataError, OSError) as exc:  # an unreadable image (Pillow's errors are OSErrors)
        log(f"error: {exc}")
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
