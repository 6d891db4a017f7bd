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
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dfine_cli.data.dataset import read_image
from dfine_cli.data.fast_augment import adjust_hue_uint8
from dfine_cli.data.transforms import AugmentConfig, TrainTransforms

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd" / "BCCD" / "JPEGImages"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def voc_boxes(image_path: Path) -> list[list[float]]:
    """``xyxy`` boxes of the VOC annotation next to ``JPEGImages`` (none if it is missing)."""
    xml = image_path.parent.parent / "Annotations" / (image_path.stem + ".xml")
    if not xml.is_file():
        return []
    boxes = []
    for obj in ET.parse(xml).getroot().iter("object"):
        box = obj.find("bndbox")
        if box is not None:
            boxes.append([float(box.findtext(k, "0")) for k in ("xmin", "ymin", "xmax", "ymax")])
    return boxes


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
    rows = []
    for name, op in ops.items():
        diffs, ratios, shifts = [], [], []
        for path in paths:
            pil = Image.open(path).convert("RGB")
            ours, theirs = op(read_image(path).as_subclass(torch.Tensor), pil)
            a, b = ours.float(), theirs.float()
            diffs.append(float((a - b).abs().mean()))
            ratios.append(float(a.std() / b.std()))
            shifts.append(float(a.mean() - b.mean()))
        rows.append((name, statistics.fmean(diffs), statistics.fmean(ratios), statistics.fmean(shifts)))
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


class _IoUCropWithP(v2.RandomIoUCrop):
    """The official ``RandomIoUCrop(p=0.8)``: torchvision's crop, skipped with probability 0.2."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, *inputs):  # type: ignore[no-untyped-def]
        if torch.rand(1) >= self.p:
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)


def pipeline_stats(paths: list[Path], img_size: int, draws: int, seed: int) -> dict[str, dict[str, float]]:
    """Sample statistics of the official transforms on PIL images and of ``TrainTransforms``."""
    official = v2.Compose([
        v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=0), _IoUCropWithP(0.8),
        v2.SanitizeBoundingBoxes(min_size=1), v2.RandomHorizontalFlip(),
        v2.Resize([img_size, img_size]), v2.SanitizeBoundingBoxes(min_size=1),
    ])
    ours = TrainTransforms(AugmentConfig(img_size=img_size, policy_epochs=(1,), base_size_repeat=None))
    samples: dict[str, list[tuple[float, float, int]]] = {"official (PIL)": [], "dfine (tensor)": []}
    torch.manual_seed(seed)
    for _ in range(draws):
        for index, path in enumerate(paths):
            boxes = voc_boxes(path)
            labels = torch.zeros(len(boxes), dtype=torch.int64)
            pil = Image.open(path).convert("RGB")
            target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes).reshape(-1, 4), format="XYXY",
                                                        canvas_size=(pil.height, pil.width)), "labels": labels}
            image, out = official(pil, target)
            pixels = F.pil_to_tensor(image).float() / 255
            samples["official (PIL)"].append((float(pixels.mean()), float(pixels.std()), len(out["boxes"])))
            tensor = read_image(path)
            target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes).reshape(-1, 4), format="XYXY",
                                                        canvas_size=tuple(tensor.shape[-2:])),
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
    print("kernel\tmean |diff| (grey levels)\tstd ratio\tmean diff (grey levels)")
    for name, diff, ratio, shift in compare_kernels(paths, args.img_size):
        print(f"{name}\t{diff:.3f}\t{ratio:.4f}\t{shift:+.3f}")
    print()
    print("seed\tpipeline\tmean pixel\tmean per-image std\tmedian per-image std\tboxes/image\tsamples")
    for seed in args.seeds:
        for name, s in pipeline_stats(paths, args.img_size, args.draws, seed).items():
            print(f"{seed}\t{name}\t{s['mean_pixel']:.4f}\t{s['mean_std']:.4f}\t{s['median_std']:.4f}"
                  f"\t{s['boxes']:.2f}\t{s['samples']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
