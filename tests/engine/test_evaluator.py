"""COCO evaluator: regression against the cocoapi numbers, both backends, de-duplication,
category-id mapping, undefined metrics, and merging across distributed ranks."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dfine_cli.engine.evaluator import (
    STAT_NAMES,
    CocoEvaluator,
    evaluate_results_file,
)
from dfine_cli.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REGRESSION = SHARED / "data" / "coco_eval_regression"
BACKENDS = ["faster", "pycocotools"]


def _require_regression_data() -> Path:
    if not (REGRESSION / "expected_bbox_stats.json").is_file():
        pytest.skip("../shared/data/coco_eval_regression is not available")
    return REGRESSION


def _ground_truth(category_ids: tuple[int, ...] = (3, 7, 42)) -> dict[str, Any]:
    """Three 100×100 images: image 1 has one box per category, image 2 one box of the first
    category, image 3 nothing. Box k of image 1 is 20 px wide at x = 10 + 30·k."""
    annotations = []
    for k, cat in enumerate(category_ids):
        annotations.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": cat,
                "bbox": [10 + 30 * k, 10, 20, 40],
                "area": 800,
            }
        )
    annotations.append(
        {
            "id": 10,
            "image_id": 2,
            "category_id": category_ids[0],
            "bbox": [50, 50, 40, 40],
            "area": 1600,
        }
    )
    return {
        "images": [
            {"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2, 3)
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in category_ids],
        "annotations": annotations,
    }


def _perfect_predictions(gt: dict[str, Any], label_to_category: list[int]) -> dict[int, tuple]:
    """Per image id: (labels, xyxy boxes, scores) reproducing the ground truth exactly."""
    label_of = {c: i for i, c in enumerate(label_to_category)}
    out: dict[int, tuple] = {}
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        boxes = torch.tensor(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        scores = torch.linspace(0.9, 0.5, len(anns))
        out[image["id"]] = (labels, boxes, scores)
    return out


def _update_all(
    evaluator: CocoEvaluator, predictions: dict[int, tuple], image_ids: list[int]
) -> None:
    for image_id in image_ids:
        labels, boxes, scores = predictions[image_id]
        evaluator.update([image_id], [labels], [boxes], [scores])


# --------------------------------------------------------------------------- regression


@pytest.mark.parametrize("backend", BACKENDS)
def test_reproduces_cocoapi_bbox_stats(backend: str) -> None:
    data = _require_regression_data()
    expected = json.loads((data / "expected_bbox_stats.json").read_text())["bbox"]
    result = evaluate_results_file(
        data / "instances_val2014_100.json",
        data / "instances_val2014_fakebbox100_results.json",
        backend=backend,
    )
    got = [result.stats[name] for name in STAT_NAMES]
    if backend == "pycocotools":
        assert got == expected  # bit for bit
    else:
        # faster-coco-eval computes precision without pycocotools' np.spacing(1) epsilon;
        # AP50 differs in the last bit (1.1e-16), the other 11 numbers are identical.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert result.num_images == 100
    assert result.num_detections == 734


def test_backends_agree_per_class() -> None:
    data = _require_regression_data()
    results = [
        evaluate_results_file(
            data / "instances_val2014_100.json",
            data / "instances_val2014_fakebbox100_results.json",
            backend=b,
        )
        for b in BACKENDS
    ]
    faster, reference = (
        [(c.category_id, c.num_gt, c.ap, c.ap50, c.precision, c.recall) for c in r.per_class]
        for r in results
    )
    assert len(faster) == len(reference) == 80
    np.testing.assert_allclose(
        np.array(faster, dtype=float), np.array(reference, dtype=float), atol=1e-12
    )


def test_results_adapter_matches_update_path() -> None:
    """Feeding the results file through update() (xyxy, contiguous labels) gives the same
    numbers as the COCO-format adapter."""
    data = _require_regression_data()
    gt = json.loads((data / "instances_val2014_100.json").read_text())
    rows = json.loads((data / "instances_val2014_fakebbox100_results.json").read_text())
    label_to_category = sorted(c["id"] for c in gt["categories"])
    label_of = {c: i for i, c in enumerate(label_to_category)}
    evaluator = CocoEvaluator(gt, label_to_category, backend="pycocotools")
    for image in gt["images"]:
        mine = [r for r in rows if r["image_id"] == image["id"]]
        xywh = np.array([r["bbox"] for r in mine], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        evaluator.update(
            [image["id"]],
            [np.array([label_of[r["category_id"]] for r in mine], dtype=np.int64)],
            [xyxy],
            [np.array([r["score"] for r in mine])],
        )
    expected = json.loads((data / "expected_bbox_stats.json").read_text())["bbox"]
    stats = evaluator.compute().stats
    got = [stats[name] for name in STAT_NAMES]
    # xywh -> xyxy -> xywh is not exact in floating point; stats agree to rounding.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- de-duplication


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_image_is_counted_once(backend: str) -> None:
    gt = _ground_truth()
    label_to_category = [3, 7, 42]
    predictions = _perfect_predictions(gt, label_to_category)
    once = CocoEvaluator(gt, label_to_category, backend=backend)
    _update_all(once, predictions, [1, 2, 3])

    twice = CocoEvaluator(gt, label_to_category, backend=backend)
    _update_all(twice, predictions, [1, 2, 3])
    # Padding duplicate from another batch, with different (wrong) detections: dropped.
    labels, boxes, scores = predictions[1]
    twice.update(torch.tensor([1]), [labels], [boxes + 30.0], [scores])
    assert len(twice) == 3
    assert twice.compute().stats == once.compute().stats
    assert once.compute().stats["AP"] == pytest.approx(1.0)


def test_gather_and_merge_without_process_group_is_a_noop() -> None:
    gt = _ground_truth()
    evaluator = CocoEvaluator(gt, [3, 7, 42])
    _update_all(evaluator, _perfect_predictions(gt, [3, 7, 42]), [1, 2])
    before = evaluator.compute().stats
    evaluator.gather_and_merge()
    assert evaluator.image_ids == [1, 2]
    assert evaluator.compute().stats == before


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        gt = _ground_truth()
        predictions = _perfect_predictions(gt, [3, 7, 42])
        evaluator = CocoEvaluator(gt, [3, 7, 42], backend="pycocotools")
        # DistributedSampler-style split of 3 images over 2 ranks, padded with image 1 again;
        # rank 1 predicts its padded copy badly, which must not count.
        if rank == 0:
            _update_all(evaluator, predictions, [1, 3])
        else:
            labels, boxes, scores = predictions[1]
            _update_all(evaluator, predictions, [2])
            evaluator.update([1], [labels], [boxes + 30.0], [scores])
        evaluator.gather_and_merge()
        result = evaluator.compute()
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps({"ids": evaluator.image_ids, "stats": result.to_json()["stats"]})
        )
    finally:
        dist.destroy_process_group()


def test_gather_and_merge_across_two_ranks(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    torch.multiprocessing.spawn(
        _distributed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )
    gt = _ground_truth()
    single = CocoEvaluator(gt, [3, 7, 42], backend="pycocotools")
    _update_all(single, _perfect_predictions(gt, [3, 7, 42]), [1, 2, 3])
    expected = single.compute().to_json()["stats"]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["ids"] == [1, 2, 3]
        assert got["stats"] == expected


# --------------------------------------------------------------------------- category ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_category_ids_are_mapped_from_labels(backend: str) -> None:
    gt = _ground_truth((3, 7, 42))
    evaluator = CocoEvaluator(gt, [3, 7, 42], backend=backend)
    _update_all(evaluator, _perfect_predictions(gt, [3, 7, 42]), [1, 2, 3])
    result = evaluator.compute()
    assert [(c.category_id, c.label, c.name) for c in result.per_class] == [
        (3, 0, "class3"),
        (7, 1, "class7"),
        (42, 2, "class42"),
    ]
    assert [c.num_gt for c in result.per_class] == [2, 1, 1]
    assert all(c.ap == pytest.approx(1.0) for c in result.per_class)
    assert all(c.precision == pytest.approx(1.0) and c.recall == 1.0 for c in result.per_class)

    # The same boxes with labels rotated by one: every detection has the wrong category.
    wrong = CocoEvaluator(gt, [7, 42, 3], backend=backend)
    _update_all(wrong, _perfect_predictions(gt, [3, 7, 42]), [1, 2, 3])
    assert wrong.compute().stats["AP"] == 0.0


def test_label_to_category_must_exist_in_ground_truth() -> None:
    with pytest.raises(DataError, match="absent from the ground truth"):
        CocoEvaluator(_ground_truth(), [3, 7, 99])


def test_bad_updates_are_rejected() -> None:
    evaluator = CocoEvaluator(_ground_truth(), [3, 7, 42])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(DataError, match="image id 77"):
        evaluator.update([77], [torch.tensor([0])], [boxes], [torch.tensor([0.5])])
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        evaluator.update([1], [torch.tensor([3])], [boxes], [torch.tensor([0.5])])
    with pytest.raises(ValueError, match="disagree in length"):
        evaluator.update([1], [torch.tensor([0, 1])], [boxes], [torch.tensor([0.5])])
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluator.compute()


def test_batched_tensor_update_equals_per_image_update() -> None:
    gt = _ground_truth()
    batched = CocoEvaluator(gt, [3, 7, 42])
    rng = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3, 5), generator=rng)
    xy = torch.rand(3, 5, 2, generator=rng) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(3, 5, 2, generator=rng) * 30], dim=-1)
    scores = torch.rand(3, 5, generator=rng)
    batched.update(torch.tensor([1, 2, 3]), labels, boxes, scores)
    single = CocoEvaluator(gt, [3, 7, 42])
    for i, image_id in enumerate([1, 2, 3]):
        single.update([image_id], [labels[i]], [boxes[i]], [scores[i]])
    assert batched.compute().stats == single.compute().stats


# --------------------------------------------------------------------------- undefined values


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_and_undefined_metrics(backend: str, tmp_path: Path) -> None:
    gt = _ground_truth((3, 7, 42))
    gt["categories"].append({"id": 50, "name": "never annotated"})
    evaluator = CocoEvaluator(gt, [3, 7, 42, 50], backend=backend)
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0))
    for image_id in (1, 2, 3):  # image 3 has no ground truth at all
        evaluator.update([image_id], [empty[0]], [empty[1]], [empty[2]])
    result = evaluator.compute()
    assert result.num_detections == 0
    assert result.stats["AP"] == 0.0 and result.stats["AR100"] == 0.0
    assert result.stats["APs"] == 0.0  # small (800 px²) and medium (1600 px²) GT only
    assert math.isnan(result.stats["APl"]) and math.isnan(result.stats["ARl"])
    never = result.per_class[-1]
    assert never.category_id == 50 and never.num_gt == 0
    assert math.isnan(never.ap) and math.isnan(never.precision)
    assert result.per_class[0].ap == 0.0 and result.per_class[0].recall == 0.0

    payload = result.to_json()
    assert payload["stats"]["APl"] is None and payload["stats"]["AP"] == 0.0
    assert payload["per_class"][-1]["AP"] is None
    result.write_json(tmp_path / "metrics.json")
    assert json.loads((tmp_path / "metrics.json").read_text()) == payload  # strict JSON, no NaN
    result.write_csv(tmp_path / "per_class.csv")
    with open(tmp_path / "per_class.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["category_id"] for r in rows] == ["3", "7", "42", "50", ""]
    assert rows[3]["AP"] == "" and rows[0]["AP"] == "0.0"
    assert rows[-1]["name"] == "all" and rows[-1]["num_gt"] == "4"


def test_false_positives_on_images_without_ground_truth_lower_precision() -> None:
    gt = _ground_truth()
    predictions = _perfect_predictions(gt, [3, 7, 42])
    clean = CocoEvaluator(gt, [3, 7, 42])
    _update_all(clean, predictions, [1, 2, 3])
    noisy = CocoEvaluator(gt, [3, 7, 42])
    _update_all(noisy, predictions, [1, 2])
    # A confident detection on the empty image 3 ranks above every true positive.
    noisy.update(
        [3], [torch.tensor([0])], [torch.tensor([[0.0, 0.0, 30.0, 30.0]])], [torch.tensor([0.99])]
    )
    assert noisy.compute().stats["AP"] < clean.compute().stats["AP"] == pytest.approx(1.0)


def test_caller_ground_truth_dict_is_not_modified() -> None:
    gt = _ground_truth()
    snapshot = json.dumps(gt, sort_keys=True)
    evaluator = CocoEvaluator(gt, [3, 7, 42], backend="pycocotools")
    _update_all(evaluator, _perfect_predictions(gt, [3, 7, 42]), [1, 2, 3])
    evaluator.compute()
    assert json.dumps(gt, sort_keys=True) == snapshot


def test_nothing_is_printed(capfd: pytest.CaptureFixture[str]) -> None:
    gt = _ground_truth()
    for backend in BACKENDS:
        evaluator = CocoEvaluator(gt, [3, 7, 42], backend=backend)
        _update_all(evaluator, _perfect_predictions(gt, [3, 7, 42]), [1, 2, 3])
        evaluator.compute()
    out, _ = capfd.readouterr()
    assert out == ""


def test_results_file_errors(tmp_path: Path) -> None:
    gt = _ground_truth()
    bad_json = tmp_path / "results.json"
    bad_json.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        evaluate_results_file(gt, bad_json)
    with pytest.raises(DataError, match="category id 5"):
        evaluate_results_file(
            gt, [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}]
        )
    with pytest.raises(DataError, match="not found"):
        evaluate_results_file(tmp_path / "missing.json", [])
    assert os.listdir(tmp_path) == ["results.json"]
