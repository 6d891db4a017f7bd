"""One evaluation path: a Detector on a split measures exactly what the trainer's validation does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dfine_cli.checkpoints import load_model
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.detector import Detector
from dfine_cli.engine.evaluate import (
    eval_loader,
    evaluate,
    evaluate_predictions,
    make_eval_split,
    open_split,
    run_evaluation,
)
from dfine_cli.errors import DataError
from dfine_cli.models.dfine import DeployModel
from tests.helpers import tiny_checkpoint

IMG_SIZE = 320


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    make_synthetic_dataset(root, num_images=20, num_classes=3, img_size=IMG_SIZE)
    return root


@pytest.fixture(scope="module")
def model_and_info(tmp_path_factory: pytest.TempPathFactory):
    model, info = load_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))
    return model.eval(), info


def test_detector_evaluation_equals_the_trainers_validation(data: Path, model_and_info) -> None:
    model, info = model_and_info
    dataset = open_split(data, "val")
    detector = Detector.from_model(model, info, device="cpu", fuse=False)
    ours = evaluate(detector, dataset, batch_size=2)

    # The trainer's path: EvalTransforms split, DeployModel on collated batches.
    split = make_eval_split(dataset.images_dir, dataset.annotation_file, IMG_SIZE)
    deploy = DeployModel(model).eval()
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @torch.inference_mode()
    def predict(images: torch.Tensor, sizes: torch.Tensor):
        return deploy(images, sizes)

    def record(targets, labels, boxes, scores) -> None:
        seen.extend(zip(labels, boxes, scores, strict=True))

    reference = run_evaluation(predict, split, eval_loader(split.dataset, 2, 0), record=record)
    assert ours.result.stats == reference.stats
    assert len(ours.predictions) == len(seen) == len(dataset)
    for mine, (labels, boxes, scores) in zip(ours.predictions, seen, strict=True):
        np.testing.assert_array_equal(mine.labels, labels)
        np.testing.assert_array_equal(mine.boxes, boxes)
        np.testing.assert_array_equal(mine.scores, scores)


def test_predictions_carry_ground_truth_in_pixels(data: Path, model_and_info) -> None:
    model, info = model_and_info
    dataset = open_split(data, "val")
    run = evaluate(Detector.from_model(model, info), dataset, batch_size=3, limit=2)
    assert [p.path for p in run.predictions] == [dataset.image_path(0), dataset.image_path(1)]
    for i, p in enumerate(run.predictions):
        image, target = dataset.load_item(i)
        assert (p.width, p.height) == (image.shape[-1], image.shape[-2])
        np.testing.assert_array_equal(p.gt_boxes, target["boxes"].numpy())
        assert p.boxes.shape == (300, 4) and np.all(np.diff(p.scores) <= 0)
    again = evaluate_predictions(run.predictions, dataset)
    assert again.stats == run.result.stats


def test_a_model_of_other_classes_is_refused(data: Path, tmp_path: Path) -> None:
    detector = Detector.from_checkpoint(tiny_checkpoint(tmp_path / "two.pth", num_classes=2))
    with pytest.raises(DataError, match="the model predicts 2 classes but the dataset has 3"):
        evaluate(detector, open_split(data, "val"))
