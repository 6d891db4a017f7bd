"""Faster drop-in versions of torchvision augmentations used by the training pipeline.

Each class subclasses the torchvision transform it replaces and draws its random numbers
from torch's default generator in exactly the same order, so a seeded pipeline makes the
same decisions (which ops run, the factors, the crop window) as with torchvision's class:

- :class:`PhotometricDistort` (``v2.RandomPhotometricDistort``): brightness, contrast and
  saturation stay torchvision's uint8 kernels; the hue shift, which is most of the cost of
  the torchvision version (a float RGB→HSV→RGB round trip in about thirty full-image tensor
  passes), runs through OpenCV's float32 HSV conversion. The output equals torchvision's
  except for rare ±1 differences of a channel value (float rounding inside the conversion).
- :class:`IoUCrop` (``v2.RandomIoUCrop``): the same rejection sampling of SSD crop windows,
  with the per-trial box tests in NumPy float32 instead of several small tensor ops per trial;
  the chosen window is identical (same float32 arithmetic).

Images are ``uint8 [3, H, W]`` tensors (``tv_tensors.Image``); other dtypes or channel counts
fall back to torchvision's kernels.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import _get_fill, get_bounding_boxes, query_size
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

__all__ = ["IoUCrop", "NearestAffine", "PhotometricDistort", "adjust_hue_uint8"]

#: torchvision's float → uint8 scale: ``floor(x * (255 + 1 - 1e-3))`` (``to_dtype``).
_TO_UINT8 = np.float32(255.0 + 1.0 - 1e-3)
_FROM_UINT8 = np.float32(1.0 / 255.0)


def adjust_hue_uint8(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """Shift the hue of an RGB ``uint8 [3, H, W]`` image by ``hue_factor`` turns.

    Same arithmetic as ``torchvision.transforms.v2.functional.adjust_hue`` (uint8 → float32
    in [0, 1], HSV, ``h = (h + hue_factor) mod 1``, RGB, back to uint8 by torchvision's
    ``to_dtype`` rule) with OpenCV's HSV conversion.

    Args:
        image: ``uint8 [3, H, W]`` RGB on the CPU, any strides.
        hue_factor: shift in ``[-0.5, 0.5]`` of a full hue turn.

    Returns:
        ``uint8 [3, H, W]`` (a channels-last view of an ``[H, W, 3]`` array).
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    hwc = image.as_subclass(torch.Tensor).permute(1, 2, 0).numpy()
    pixels = np.ascontiguousarray(hwc, dtype=np.float32)
    pixels *= _FROM_UINT8
    hsv = np.asarray(cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV), dtype=np.float32)  # H: degrees
    hue = hsv[..., 0]
    np.add(hue, np.float32(hue_factor * 360.0), out=hue)
    np.mod(hue, np.float32(360.0), out=hue)
    rgb = np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), dtype=np.float32)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    np.multiply(rgb, _TO_UINT8, out=rgb)
    return torch.from_numpy(rgb.astype(np.uint8)).permute(2, 0, 1)


class PhotometricDistort(v2.RandomPhotometricDistort):
    """``v2.RandomPhotometricDistort`` with the hue shift of :func:`adjust_hue_uint8`.

    Parameters and random draws are the parent's; see the module docstring.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        hue = params["hue_factor"]
        if (
            hue is None
            or type(inpt) is not tv_tensors.Image
            or inpt.dtype != torch.uint8
            or inpt.shape[-3] != 3
            or inpt.ndim != 3
            or inpt.device.type != "cpu"
        ):
            return super().transform(inpt, params)
        contrast_before = params["contrast_before"]
        before = dict(params, hue_factor=None, channel_permutation=None)
        if not contrast_before:
            before["contrast_factor"] = None
        image = super().transform(inpt, before)
        image = tv_tensors.Image(adjust_hue_uint8(image, hue))
        after = {
            "brightness_factor": None,
            "saturation_factor": None,
            "hue_factor": None,
            "contrast_factor": None if contrast_before else params["contrast_factor"],
            "contrast_before": False,
            "channel_permutation": params["channel_permutation"],
        }
        return super().transform(image, after)


class IoUCrop(v2.RandomIoUCrop):
    """``v2.RandomIoUCrop`` with cheaper per-trial tests; same draws, same chosen window."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        orig_h, orig_w = query_size(flat_inputs)
        boxes = get_bounding_boxes(flat_inputs)
        xyxy_tensor = F.convert_bounding_box_format(
            boxes.as_subclass(torch.Tensor), boxes.format, tv_tensors.BoundingBoxFormat.XYXY
        )
        if xyxy_tensor.dtype != torch.float32:
            return super().make_params(flat_inputs)
        xyxy = xyxy_tensor.numpy()
        half = np.float32(0.5)
        cx = half * (xyxy[:, 0] + xyxy[:, 2])
        cy = half * (xyxy[:, 1] + xyxy[:, 3])
        areas = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        low = np.float32(self.min_scale)
        span = np.float32(self.max_scale - self.min_scale)
        while True:
            option = int(torch.randint(low=0, high=len(self.options), size=(1,)))
            min_jaccard_overlap = self.options[option]
            if min_jaccard_overlap >= 1.0:  # "leave as is"
                return {}
            for _ in range(self.trials):
                scale = low + span * torch.rand(2).numpy()
                new_w = int(np.float32(orig_w) * scale[0])
                new_h = int(np.float32(orig_h) * scale[1])
                # (torchvision divides by zero on new_h == 0, only for images under 4 px)
                if new_h == 0 or not (
                    self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio
                ):
                    continue
                position = torch.rand(2).numpy()
                left = int(np.float32(orig_w - new_w) * position[0])
                top = int(np.float32(orig_h - new_h) * position[1])
                right, bottom = left + new_w, top + new_h
                if left == right or top == bottom:
                    continue
                within = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
                if not within.any():
                    continue
                if _max_iou(xyxy[within], areas[within], left, top, right, bottom) < (
                    min_jaccard_overlap
                ):
                    continue
                return {
                    "top": top,
                    "left": left,
                    "height": new_h,
                    "width": new_w,
                    "is_within_crop_area": torch.from_numpy(within),
                }


class NearestAffine(v2.RandomAffine):
    """``v2.RandomAffine`` (nearest neighbour) with the image warped by OpenCV.

    Same parameters and draws as the parent; boxes are the parent's. The image is sampled at
    the same source positions as torchvision's ``affine`` (pixel centres, rotation about the
    image centre); OpenCV rounds them in fixed point (1/1024 px), so a pixel whose source lies
    within about 1/1000 px of a rounding boundary may take its neighbour's value.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if (
            type(inpt) is not tv_tensors.Image
            or inpt.dtype != torch.uint8
            or inpt.ndim != 3
            or inpt.shape[-3] != 3
            or inpt.device.type != "cpu"
            or getattr(self.interpolation, "value", self.interpolation) != "nearest"
            or self.center is not None
        ):
            return super().transform(inpt, params)
        fill = _get_fill(self._fill, type(inpt))
        if isinstance(fill, (list, tuple)):
            border = tuple(float(v) for v in fill) if len(fill) == 3 else (float(fill[0]),) * 3
        else:
            border = (float(fill or 0),) * 3
        height, width = int(inpt.shape[-2]), int(inpt.shape[-1])
        a, b, tx, c, d, ty = _get_inverse_affine_matrix(
            [0.0, 0.0],
            float(params["angle"]),
            [float(t) for t in params["translate"]],
            float(params["scale"]),
            [float(s) for s in params["shear"]],
        )
        # torchvision maps output pixel centres about the image centre: src = A (dst - c) + t + c
        cx, cy = width * 0.5 - 0.5, height * 0.5 - 0.5
        inverse = np.array(
            [[a, b, tx + cx - a * cx - b * cy], [c, d, ty + cy - c * cx - d * cy]], dtype=np.float64
        )
        hwc = np.ascontiguousarray(inpt.as_subclass(torch.Tensor).permute(1, 2, 0).numpy())
        warped = cv2.warpAffine(
            hwc,
            inverse,
            (width, height),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
        return tv_tensors.Image(torch.from_numpy(np.asarray(warped)).permute(2, 0, 1))


def _max_iou(
    xyxy: np.ndarray, areas: np.ndarray, left: int, top: int, right: int, bottom: int
) -> float:
    """Largest IoU of ``xyxy`` boxes (float32 ``[N, 4]``, areas ``[N]``) with one window,
    in the float32 operation order of ``torchvision.ops.box_iou``."""
    window = np.array([left, top, right, bottom], dtype=np.float32)
    window_area = (window[2] - window[0]) * (window[3] - window[1])
    lt = np.maximum(xyxy[:, :2], window[:2])
    rb = np.minimum(xyxy[:, 2:], window[2:])
    wh = np.maximum(rb - lt, np.float32(0.0))
    inter = wh[:, 0] * wh[:, 1]
    union = areas + window_area - inter
    return float((inter / union).max())
