"""The faster photometric distortion, IoU crop and JPEG decoding equal torchvision's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dfine_cli.data.dataset import read_image
from dfine_cli.data.fast_augment import IoUCrop, PhotometricDistort, adjust_hue_uint8


def _random_sample(rng: np.random.Generator) -> tuple[tv_tensors.Image, dict]:
    height, width = int(rng.integers(24, 120)), int(rng.integers(24, 120))
    image = tv_tensors.Image(
        torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
    )
    n = int(rng.integers(1, 8))
    x1, y1 = rng.uniform(0, width - 4, n), rng.uniform(0, height - 4, n)
    xyxy = np.stack(
        [
            x1,
            y1,
            np.minimum(x1 + rng.uniform(1, width, n), width),
            np.minimum(y1 + rng.uniform(1, height, n), height),
        ],
        axis=1,
    )
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor(xyxy, dtype=torch.float32), format="XYXY", canvas_size=(height, width)
    )
    return image, {"boxes": boxes, "labels": torch.arange(n)}


def test_photometric_and_iou_crop_make_torchvision_decisions_and_pixels():
    rng = np.random.default_rng(0)
    reference = (v2.RandomPhotometricDistort(p=0.5), v2.RandomIoUCrop())
    fast = (PhotometricDistort(p=0.5), IoUCrop())
    differing = total = cropped = hue_applied = 0
    for seed in range(150):
        image, target = _random_sample(rng)
        outputs = []
        for photometric, crop in (reference, fast):
            torch.manual_seed(seed)
            params = photometric.make_params([image])
            torch.manual_seed(seed)
            out_image, out_target = crop(*photometric(image, target))
            outputs.append((out_image, out_target, torch.rand(3)))
        hue_applied += params["hue_factor"] is not None
        (ref_image, ref_target, ref_next), (new_image, new_target, new_next) = outputs
        # same random draws: same crop window and boxes, same generator state afterwards
        assert torch.equal(ref_next, new_next), seed
        assert ref_image.shape == new_image.shape, seed
        assert torch.equal(ref_target["boxes"], new_target["boxes"]), seed
        cropped += ref_image.shape != image.shape
        diff = (ref_image.int() - new_image.int()).abs()
        assert int(diff.max()) <= 1, seed
        differing += int((diff > 0).sum())
        total += diff.numel()
    assert cropped > 50 and hue_applied > 30  # both ops were exercised
    assert differing / total < 1e-3


@pytest.mark.parametrize("hue", [-0.5, -0.05, 0.0, 0.013, 0.05, 0.5])
def test_adjust_hue_uint8_matches_torchvision(hue):
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=g)
    image[:, :4] = 128  # grey pixels: hue undefined
    expected = F.adjust_hue(image, hue)
    got = adjust_hue_uint8(image, hue)
    assert got.shape == expected.shape and got.dtype == torch.uint8
    assert int((got.int() - expected.int()).abs().max()) <= 1
    # a channels-last input gives the same result
    strided = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert torch.equal(adjust_hue_uint8(strided, hue), got)


def test_adjust_hue_uint8_rejects_out_of_range_factor():
    with pytest.raises(ValueError, match="hue_factor"):
        adjust_hue_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8), 0.6)


def test_photometric_distort_falls_back_for_float_images():
    image = tv_tensors.Image(torch.rand(3, 16, 16))
    params = {
        "brightness_factor": None,
        "contrast_factor": None,
        "saturation_factor": None,
        "hue_factor": 0.03,
        "contrast_before": True,
        "channel_permutation": None,
    }
    out = PhotometricDistort().transform(image, params)
    torch.testing.assert_close(out, F.adjust_hue(image, 0.03))


def _jpeg_bytes(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def test_read_image_jpeg_equals_torchvision_decoder(tmp_path: Path):
    rng = np.random.default_rng(2)
    colour = tmp_path / "colour.jpg"
    colour.write_bytes(_jpeg_bytes(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)))
    grey = tmp_path / "grey.jpg"
    grey.write_bytes(_jpeg_bytes(rng.integers(0, 256, (17, 23), dtype=np.uint8)))
    for path in (colour, grey):
        got = read_image(path)
        expected = decode_image(str(path), mode=ImageReadMode.RGB)
        assert isinstance(got, tv_tensors.Image) and got.shape == expected.shape
        assert torch.equal(got, expected), path.name


def test_read_image_jpeg_ignores_exif_orientation(tmp_path: Path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise" when displayed
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(array, exif=exif.tobytes()))
    assert tuple(read_image(path).shape) == (3, 20, 40)  # stored orientation, as COCO


def test_read_image_corrupt_jpeg_is_a_data_error(tmp_path: Path):
    from dfine_cli.errors import DataError

    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        read_image(path)


def test_nearest_affine_matches_torchvision_affine():
    from dfine_cli.data.fast_augment import NearestAffine

    settings = {"degrees": 10.0, "translate": [0.1, 0.1], "scale": [0.5, 1.5], "fill": 0}
    reference, fast = v2.RandomAffine(**settings), NearestAffine(**settings)
    rng = np.random.default_rng(3)
    differing = total = 0
    for seed in range(20):
        height, width = int(rng.integers(20, 160)), int(rng.integers(20, 160))
        image = tv_tensors.Image(
            torch.from_numpy(rng.integers(1, 256, (3, height, width), dtype=np.uint8))
        )
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor([[2.0, 3.0, 15.0, 12.0]]), format="XYXY", canvas_size=(height, width)
        )
        torch.manual_seed(seed)
        ref_image, ref_boxes = reference(image, boxes)
        torch.manual_seed(seed)
        new_image, new_boxes = fast(image, boxes)
        assert torch.equal(ref_boxes, new_boxes) and ref_image.shape == new_image.shape
        mismatch = (ref_image != new_image).any(0)
        differing += int(mismatch.sum())
        total += mismatch.numel()
    assert differing / total < 1e-3  # fixed-point rounding of OpenCV, ~1e-5 of the pixels
