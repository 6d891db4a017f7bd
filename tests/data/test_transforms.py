"""Training/evaluation pipelines: recipe presets, epoch policies, Mosaic, mixup, multi-scale
batches and seeded determinism."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from dfine_cli.data.dataset import CocoDetectionDataset
from dfine_cli.data.mosaic import Mosaic, MosaicConfig
from dfine_cli.data.transforms import (
    HORIZONTAL_FLIP,
    IOU_CROP,
    MOSAIC,
    PHOTOMETRIC_DISTORT,
    ZOOM_OUT,
    AugmentPolicy,
    BatchCollator,
    EvalTransforms,
    MixupPolicy,
    MultiScalePolicy,
    TrainTransforms,
    collate,
    generate_scales,
)
from dfine_cli.engine.recipes import DEIM_MOSAIC, augment_preset
from dfine_cli.errors import UsageError
from dfine_cli.models.presets import SIZES
from dfine_cli.models.presets import VARIANTS as RECIPES

ALL_OPS = {MOSAIC, PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP}
# DEIM's Mosaic scaled down to the tiny test images (the official 320 px would dominate run time).
SMALL_MOSAIC = dataclasses.replace(DEIM_MOSAIC, output_size=32)


class InMemorySource:
    """A SampleSource of synthetic images: sample i is (40 + 8i) wide, 32 high, with i + 1
    boxes of label i % 3."""

    def __init__(self, n: int = 6) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load_item(self, index: int) -> tuple[tv_tensors.Image, dict]:
        width, height = 40 + 8 * index, 32
        g = torch.Generator().manual_seed(index)
        image = tv_tensors.Image(
            torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        )
        boxes = torch.tensor([[2.0 + 4 * k, 2.0, 14.0 + 4 * k, 20.0] for k in range(index + 1)])
        return image, {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.full((index + 1,), index % 3, dtype=torch.int64),
            "image_id": torch.tensor(100 + index),
            "orig_size": torch.tensor([width, height]),
            "idx": torch.tensor(index),
        }


def _assert_valid_output(image: torch.Tensor, target: dict, size: int) -> None:
    assert image.shape == (3, size, size) and image.dtype == torch.uint8  # collate makes floats
    _assert_valid_boxes(target)


def _assert_valid_boxes(target: dict) -> None:
    """cxcywh boxes normalised to [0, 1], positive size, entirely inside the image."""
    boxes = target["boxes"]
    assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32
    assert boxes.shape == (len(target["labels"]), 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2:] > 0).all()  # positive width and height (cxcywh)
    cx, cy, w, h = boxes.unbind(-1)
    assert ((cx - w / 2 >= -1e-6) & (cx + w / 2 <= 1 + 1e-6)).all()
    assert ((cy - h / 2 >= -1e-6) & (cy + h / 2 <= 1 + 1e-6)).all()


# --------------------------------------------------------------------------- presets

# (policy epochs, multi-scale stop epoch, base_size_repeat, mixup epochs) from the official YAMLs.
OFFICIAL = {
    ("dfine", "n"): ((148,), 148, None, (0, 0)),
    ("dfine", "s"): ((120,), 120, 20, (0, 0)),
    ("dfine", "m"): ((120,), 120, 6, (0, 0)),
    ("dfine", "l"): ((72,), 72, 4, (0, 0)),
    ("dfine", "x"): ((72,), 72, 3, (0, 0)),
    ("deim", "n"): ((4, 78, 148), 148, None, (4, 78)),
    ("deim", "s"): ((4, 64, 120), 120, 20, (4, 64)),
    ("deim", "m"): ((4, 49, 90), 90, 6, (4, 49)),
    ("deim", "l"): ((4, 29, 50), 50, 4, (4, 29)),
    ("deim", "x"): ((4, 29, 50), 50, 3, (4, 29)),
}


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("size", SIZES)
def test_presets_follow_the_official_configs(recipe: str, size: str) -> None:
    config = augment_preset(recipe, size)
    policy_epochs, stop, repeat, mixup_epochs = OFFICIAL[(recipe, size)]
    assert config.policy_epochs == policy_epochs
    assert config.multiscale_stop_epoch == stop
    assert config.base_size_repeat == repeat
    assert config.mixup_epochs == mixup_epochs
    assert (config.img_size, config.base_size) == (640, 640)
    assert (config.photometric_p, config.iou_crop_p, config.zoom_out_fill, config.min_box_size) == (
        0.5,
        0.8,
        0,
        1.0,
    )
    if recipe == "deim":
        assert config.mosaic is not None and config.mosaic.output_size == 320
        assert (
            config.mosaic.rotation_range,
            config.mosaic.fill_value,
            config.mosaic.use_cache,
        ) == (10.0, 0, False)
        assert (config.mosaic_prob, config.mixup_prob) == (0.5, 0.5)
        assert config.policy_ops == (MOSAIC, PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP)
    else:
        assert config.mosaic is None and config.mixup_prob == 0.0
        assert config.policy_ops == (PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP)


def test_preset_overrides_and_validation() -> None:
    config = augment_preset("deim", "s", img_size=320, mixup_prob=0.25)
    assert (config.img_size, config.base_size, config.mixup_prob) == (320, 320, 0.25)
    with pytest.raises(UsageError, match="unknown augmentation settings"):
        augment_preset("deim", "s", mixup=0.3)
    with pytest.raises(UsageError, match="no recipe 'yolo'"):
        augment_preset("yolo", "s")
    with pytest.raises(UsageError, match="policy_epochs"):
        augment_preset("deim", "s", policy_epochs=(4, 64))
    with pytest.raises(UsageError, match="unknown policy ops"):
        augment_preset("dfine", "s", policy_ops=("RandomCrop",))
    with pytest.raises(UsageError, match="mixup_prob"):
        augment_preset("dfine", "s", mixup_prob=1.5)
    with pytest.raises(UsageError, match="multiple of 32"):
        augment_preset("dfine", "s", img_size=100)


def test_generate_scales_matches_the_official_list() -> None:
    assert generate_scales(640, 3) == [
        480,
        512,
        544,
        576,
        608,
        640,
        640,
        640,
        800,
        768,
        736,
        704,
        672,
    ]
    # 0.75·320 and 1.25·320 round down to multiples of 32 unevenly: 320 appears once anyway.
    assert generate_scales(320, 0) == [224, 256, 288, 384, 352, 320]


# --------------------------------------------------------------------------- policies


def test_dfine_policy_switches_ops_off_at_the_stop_epoch() -> None:
    policy = AugmentPolicy(
        epochs=(72,),
        controlled=(PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP),
        available=(PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP),
    )
    g = torch.Generator().manual_seed(0)
    policy.set_epoch(71)
    assert policy.sample(g) == {PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP}
    policy.set_epoch(72)
    assert policy.sample(g) == {HORIZONTAL_FLIP}


def test_deim_policy_stages() -> None:
    controlled = (MOSAIC, PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP)
    policy = AugmentPolicy(
        epochs=(4, 29, 50), controlled=controlled, available=ALL_OPS, mosaic_prob=1.0
    )
    g = torch.Generator().manual_seed(0)
    expected = {
        0: {HORIZONTAL_FLIP},  # warm-up stage: no policy ops
        3: {HORIZONTAL_FLIP},
        4: {MOSAIC, PHOTOMETRIC_DISTORT, HORIZONTAL_FLIP},  # Mosaic replaces ZoomOut/IoUCrop
        28: {MOSAIC, PHOTOMETRIC_DISTORT, HORIZONTAL_FLIP},
        29: {PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP},  # D-FINE stage
        49: {PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP},
        50: {HORIZONTAL_FLIP},  # no-augmentation stage
        200: {HORIZONTAL_FLIP},
    }
    for epoch, ops in expected.items():
        policy.set_epoch(epoch)
        assert policy.sample(g) == ops, epoch


def test_deim_mosaic_probability() -> None:
    policy = AugmentPolicy(
        epochs=(4, 29, 50),
        controlled=(MOSAIC, ZOOM_OUT, IOU_CROP),
        available=ALL_OPS,
        mosaic_prob=0.5,
    )
    policy.set_epoch(10)
    g = torch.Generator().manual_seed(0)
    draws = Counter(MOSAIC in policy.sample(g) for _ in range(1000))
    assert 430 < draws[True] < 570
    policy.set_epoch(30)
    assert not any(MOSAIC in policy.sample(g) for _ in range(50))


def test_mixup_and_multiscale_policies_follow_epochs() -> None:
    g = torch.Generator().manual_seed(0)
    mixup = MixupPolicy(prob=1.0, epochs=(4, 29))
    for epoch, applies in [(3, False), (4, True), (28, True), (29, False)]:
        mixup.set_epoch(epoch)
        beta = mixup.sample(g)
        assert (beta is not None) == applies
        assert beta is None or 0.45 <= beta <= 0.55
    scales = generate_scales(640, 3)
    multiscale = MultiScalePolicy(scales=scales, stop_epoch=72)
    multiscale.set_epoch(71)
    seen = {multiscale.sample(g) for _ in range(200)}
    assert seen == set(scales)
    multiscale.set_epoch(72)
    assert multiscale.sample(g) is None
    with pytest.raises(ValueError, match="epoch"):
        multiscale.set_epoch(-1)


# --------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("epoch", [0, 5, 35, 200])
def test_train_pipeline_outputs_normalised_targets(recipe: str, epoch: int) -> None:
    config = augment_preset(recipe, "l", img_size=64)
    if config.mosaic is not None:
        config = dataclasses.replace(config, mosaic=SMALL_MOSAIC)
    pipeline = TrainTransforms(config, seed=0)
    pipeline.set_epoch(epoch)
    source = InMemorySource()
    for index in range(len(source)):
        image, target = pipeline(*source.load_item(index), source=source)
        _assert_valid_output(image, target, 64)
        assert target["image_id"].item() == 100 + index


def test_negative_sample_survives_every_op() -> None:
    config = augment_preset("deim", "s", img_size=64, mosaic_prob=0.0, iou_crop_p=1.0)
    pipeline = TrainTransforms(config, seed=0)
    pipeline.set_epoch(30)  # photometric, zoom-out and IoU crop all on
    image = tv_tensors.Image(torch.zeros(3, 30, 40, dtype=torch.uint8))
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(30, 40)),
        "labels": torch.zeros(0, dtype=torch.int64),
        "idx": torch.tensor(3),
    }
    for _ in range(5):
        out, target = pipeline(image, empty)
        _assert_valid_output(out, target, 64)
        assert target["boxes"].shape == (0, 4)


def test_after_the_stop_epoch_training_equals_evaluation_preprocessing() -> None:
    config = augment_preset("dfine", "s", img_size=64, flip_p=0.0)
    train, evaluation = TrainTransforms(config, seed=0), EvalTransforms(img_size=64)
    source = InMemorySource()

    def outputs(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        train.set_epoch(epoch)
        return [
            (image, target["boxes"])
            for image, target in (
                train(*source.load_item(i), source=source) for i in range(len(source))
            )
        ]

    expected = [
        (image, target["boxes"])
        for image, target in (evaluation(*source.load_item(i)) for i in range(6))
    ]
    for (image, boxes), (ref_image, ref_boxes) in zip(outputs(120), expected, strict=True):
        torch.testing.assert_close(image, ref_image)
        torch.testing.assert_close(boxes, ref_boxes)
    augmented = outputs(119)
    assert any(not torch.equal(a[0], e[0]) for a, e in zip(augmented, expected, strict=True))


def test_mosaic_requires_a_source() -> None:
    config = augment_preset("deim", "s", img_size=64, mosaic=SMALL_MOSAIC, mosaic_prob=1.0)
    pipeline = TrainTransforms(config, seed=0)
    pipeline.set_epoch(5)
    with pytest.raises(ValueError, match="Mosaic needs the dataset"):
        pipeline(*InMemorySource().load_item(0))


# --------------------------------------------------------------------------- mosaic


def test_mosaic_places_four_resized_images_on_a_grid() -> None:
    identity_affine = MosaicConfig(
        output_size=16, rotation_range=0.0, translation_range=(0.0, 0.0), scaling_range=(1.0, 1.0)
    )
    mosaic = Mosaic(identity_affine)
    source = InMemorySource()
    image, target = source.load_item(0)  # 40×32 → 20×16
    g = torch.Generator().manual_seed(3)
    partners = torch.randint(len(source), (3,), generator=torch.Generator().manual_seed(3)).tolist()
    out, merged = mosaic(image, target, source, g)
    widths = [20] + [(40 + 8 * j) // 2 for j in partners]
    max_w = max(widths)
    assert out.shape == (3, 32, 2 * max_w) and out.dtype == torch.uint8
    assert merged["boxes"].canvas_size == (32, 2 * max_w)
    assert merged["labels"].tolist() == [0, *(j % 3 for j in partners for _ in range(j + 1))]
    assert merged["image_id"].item() == 100 and merged["idx"].item() == 0
    # The first image sits at the top-left, resized by one half; its box too.
    torch.testing.assert_close(
        merged["boxes"][0].as_subclass(torch.Tensor), torch.tensor([1.0, 1.0, 7.0, 10.0])
    )
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=(16, 20), mode="bilinear", antialias=True
    )
    assert (out[:, :16, :20].float() - resized[0]).abs().mean() < 2.0
    # Bottom-right cell, shifted by (max_w, 16).
    last = partners[-1]
    assert merged["boxes"][-1].as_subclass(torch.Tensor)[1].item() == pytest.approx(16 + 1.0)
    assert merged["boxes"][-1].as_subclass(torch.Tensor)[0].item() == pytest.approx(
        max_w + (2.0 + 4 * last) / 2
    )


def test_mosaic_with_random_affine_keeps_valid_boxes() -> None:
    mosaic = Mosaic(MosaicConfig(output_size=24, rotation_range=10.0, fill_value=0))
    source = InMemorySource()
    g = torch.Generator().manual_seed(0)
    for index in range(len(source)):
        out, merged = mosaic(*source.load_item(index), source, g)
        boxes = merged["boxes"].as_subclass(torch.Tensor)
        h, w = merged["boxes"].canvas_size
        assert out.shape[-2:] == (h, w)
        assert len(boxes) == len(merged["labels"]) >= 4
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()


def test_mosaic_cache_is_bounded_and_probability_zero_skips() -> None:
    source = InMemorySource()
    mosaic = Mosaic(MosaicConfig(output_size=16, use_cache=True, max_cached_images=4))
    g = torch.Generator().manual_seed(0)
    for index in list(range(len(source))) * 2:
        out, merged = mosaic(*source.load_item(index), source, g)
        assert len(merged["boxes"]) == len(merged["labels"])
    assert len(mosaic._cache) == 4
    image, target = source.load_item(2)
    never = Mosaic(MosaicConfig(probability=0.0))
    out, same = never(image, target, source, g)
    assert out is image and same is target


# --------------------------------------------------------------------------- collator


def _batch(n: int = 4, size: int = 32) -> list[tuple[torch.Tensor, dict]]:
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        boxes = torch.rand(i + 1, 4, generator=g) * 0.4 + 0.1
        items.append(
            (
                torch.rand(3, size, size, generator=g),
                {"boxes": boxes, "labels": torch.full((i + 1,), i), "idx": torch.tensor(i)},
            )
        )
    return items


def test_collate_stacks_images() -> None:
    items = _batch()
    images, targets = collate(items)
    assert images.shape == (4, 3, 32, 32)
    assert [t["idx"].item() for t in targets] == [0, 1, 2, 3]


def test_collate_converts_uint8_batches_as_each_image_would_be() -> None:
    g = torch.Generator().manual_seed(3)
    hwc = [torch.randint(0, 256, (24, 20, 3), dtype=torch.uint8, generator=g) for _ in range(3)]
    items = [(img.permute(2, 0, 1), {"idx": torch.tensor(i)}) for i, img in enumerate(hwc)]  # channels-last views
    images, _ = collate(items)
    assert images.dtype == torch.float32 and images.is_contiguous()
    each = torch.stack([F.to_dtype(image, torch.float32, scale=True) for image, _ in items])
    assert torch.equal(images, each)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_mixup_equals_the_rolled_formula_bit_for_bit() -> None:
    from dfine_cli.data.transforms import _mixup

    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    targets = [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([i])} for i in range(4)]
    mixed, _ = _mixup(images, targets, 0.37)
    assert torch.equal(mixed, images * 0.37 + images.roll(shifts=1, dims=0) * (1.0 - 0.37))


def test_mixup_blends_neighbours_and_merges_targets() -> None:
    collator = BatchCollator(mixup=MixupPolicy(prob=1.0, epochs=(0, 10)), seed=0)
    items = _batch()
    images = torch.stack([image for image, _ in items])
    mixed, targets = collator(items)
    beta = float((mixed[0] - images[3]).flatten()[0] / (images[0] - images[3]).flatten()[0])
    assert 0.45 <= beta <= 0.55
    torch.testing.assert_close(
        mixed, beta * images + (1 - beta) * images.roll(1, 0), rtol=0, atol=1e-5
    )
    assert [t["labels"].tolist() for t in targets] == [
        [0, 3, 3, 3, 3],
        [1, 1, 0],
        [2, 2, 2, 1, 1],
        [3, 3, 3, 3, 2, 2, 2],
    ]
    torch.testing.assert_close(
        targets[1]["boxes"], torch.cat([items[1][1]["boxes"], items[0][1]["boxes"]])
    )
    assert items[0][1]["labels"].tolist() == [0]  # inputs are not modified

    collator.set_epoch(10)
    unmixed, targets = collator(items)
    torch.testing.assert_close(unmixed, images)
    assert [len(t["labels"]) for t in targets] == [1, 2, 3, 4]


def test_multiscale_batches_until_the_stop_epoch() -> None:
    config = augment_preset("dfine", "l")
    collator = BatchCollator.from_config(config, seed=0)
    assert collator.mixup is None
    scales = set(generate_scales(640, 4))
    sizes = set()
    for step in range(30):
        items = [
            (image, {**target, "idx": torch.tensor(step * 4 + i)})
            for i, (image, target) in enumerate(_batch(size=64))
        ]
        images, targets = collator(items)
        assert images.shape[:2] == (4, 3) and images.shape[2] == images.shape[3]
        sizes.add(images.shape[-1])
        torch.testing.assert_close(targets[0]["boxes"], items[0][1]["boxes"])
    assert sizes <= scales and len(sizes) > 3
    collator.set_epoch(config.multiscale_stop_epoch)
    assert collator(_batch(size=64))[0].shape == (4, 3, 64, 64)  # left as the pipeline made it


def test_n_presets_have_no_multiscale() -> None:
    assert BatchCollator.from_config(augment_preset("deim", "n")).multiscale is None


# --------------------------------------------------------------------------- determinism


def test_seeded_pipeline_is_deterministic_and_leaves_global_rng_alone() -> None:
    config = augment_preset("deim", "s", img_size=64, mosaic=SMALL_MOSAIC)
    source = InMemorySource()

    def run(seed: int, epoch: int) -> list[torch.Tensor]:
        pipeline = TrainTransforms(config, seed=seed)
        pipeline.set_epoch(epoch)
        return [pipeline(*source.load_item(i), source=source)[0] for i in range(len(source))]

    state = torch.get_rng_state()
    first = run(seed=1, epoch=5)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first, run(seed=1, epoch=5), strict=True):
        assert torch.equal(a, b)
    assert any(
        a.shape != b.shape or not torch.equal(a, b)
        for a, b in zip(first, run(seed=2, epoch=5), strict=True)
    )
    assert any(
        a.shape != b.shape or not torch.equal(a, b)
        for a, b in zip(first, run(seed=1, epoch=6), strict=True)
    )


def _write_jpeg_dataset(root: Path, n: int = 8) -> tuple[Path, Path]:
    images_dir = root / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n):
        width, height = 64 + 8 * (i % 3), 48
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            images_dir / f"{i}.jpg"
        )
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": width, "height": height})
        for k in range(i % 3):  # every third image is a negative
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": (3, 7, 42)[k],
                    "bbox": [5 + 15 * k, 8, 12, 20],
                }
            )
    ann_file = root / "instances.json"
    categories = [{"id": c, "name": str(c)} for c in (3, 7, 42)]
    ann_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return images_dir, ann_file


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    images_dir, ann_file = _write_jpeg_dataset(tmp_path)
    config = augment_preset(
        "deim", "s", img_size=64, mosaic=SMALL_MOSAIC, mosaic_prob=1.0, mixup_prob=1.0
    )

    def epoch_batches(num_workers: int) -> list[tuple[torch.Tensor, list[dict]]]:
        dataset = CocoDetectionDataset(images_dir, ann_file, TrainTransforms(config, seed=7))
        collator = BatchCollator.from_config(config, seed=7)
        dataset.set_epoch(5)  # mosaic, mixup and multi-scale all active
        collator.set_epoch(5)
        loader = DataLoader(
            dataset, batch_size=4, shuffle=False, num_workers=num_workers, collate_fn=collator
        )
        return list(loader)

    serial, parallel = epoch_batches(0), epoch_batches(2)
    assert len(serial) == len(parallel) == 2
    # Mosaic (four images per sample) then mixup (two mosaics per sample): far more boxes
    # than the images of the batch have (0, 1 or 2 each).
    for _, targets in serial:
        raw = sum(int(t["idx"]) % 3 for t in targets)
        assert sum(len(t["labels"]) for t in targets) > 2 * raw
    for (images_a, targets_a), (images_b, targets_b) in zip(serial, parallel, strict=True):
        assert torch.equal(images_a, images_b)
        for a, b in zip(targets_a, targets_b, strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
            _assert_valid_boxes(a)


def test_eval_pipeline_is_a_plain_resize() -> None:
    image, target = InMemorySource().load_item(1)
    out, converted = EvalTransforms(img_size=32)(image, target)
    _assert_valid_output(out, converted, 32)
    # Box [2, 2, 14, 20] on a 48×32 image → cxcywh normalised.
    torch.testing.assert_close(
        converted["boxes"][0], torch.tensor([8 / 48, 11 / 32, 12 / 48, 18 / 32])
    )
