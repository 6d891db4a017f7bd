"""Our predictions as FiftyOne samples (pure), and FiftyOne itself where it can start."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dfine_cli.engine.evaluate import ImagePrediction
from dfine_cli.errors import DependencyError
from dfine_cli.viz.fiftyone_export import relative_xywh, to_sample_records


def _prediction() -> ImagePrediction:
    return ImagePrediction(
        image_id=7, path=Path("/data/a.jpg"), width=200, height=100,
        gt_boxes=np.array([[20, 10, 60, 50]], np.float32), gt_labels=np.array([1]),
        boxes=np.array([[20, 10, 60, 50], [-10, 90, 30, 130], [0, 0, 5, 5]], np.float32),
        labels=np.array([1, 0, 2]), scores=np.array([0.9, 0.5, 0.1], np.float32),
    )


def test_relative_boxes_are_clipped_xywh():
    assert relative_xywh([20, 10, 60, 50], 200, 100) == pytest.approx((0.1, 0.1, 0.2, 0.4))
    assert relative_xywh([-10, 90, 30, 130], 200, 100) == pytest.approx((0.0, 0.9, 0.15, 0.1))


def test_sample_records_keep_names_confidences_and_threshold():
    [record] = to_sample_records([_prediction()], ["cat", "dog", "bird"], conf=0.3)
    assert record.filepath == "/data/a.jpg" and record.image_id == 7
    assert [(d.label, d.confidence) for d in record.ground_truth] == [("dog", None)]
    assert [d.label for d in record.predictions] == ["dog", "cat"]  # 0.1 is below conf
    assert record.predictions[0].confidence == pytest.approx(0.9)
    assert record.predictions[0].bounding_box == pytest.approx((0.1, 0.1, 0.2, 0.4))
    assert len(to_sample_records([_prediction()], ["cat", "dog", "bird"])[0].predictions) == 3


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="no class name"):
        to_sample_records([_prediction()], ["cat", "dog"])


def test_records_from_a_real_split(fake_predictions):
    dataset, predictions = fake_predictions
    records = to_sample_records(predictions, dataset.class_names)
    assert len(records) == len(predictions)
    for rec, pred in zip(records, predictions, strict=True):
        assert len(rec.ground_truth) == len(pred.gt_boxes)
        for d in rec.ground_truth + rec.predictions:
            x, y, w, h = d.bounding_box
            assert 0 <= x <= 1 and 0 <= y <= 1 and 0 <= x + w <= 1 + 1e-6 and 0 <= y + h <= 1 + 1e-6


def _fiftyone_can_start() -> bool:
    if importlib.util.find_spec("fiftyone") is None:
        return False
    try:
        import fiftyone as fo

        fo.list_datasets()  # starts (or connects to) the database
    except Exception:
        return False
    return True


@pytest.mark.skipif(importlib.util.find_spec("fiftyone") is not None, reason="FiftyOne installed")
def test_missing_fiftyone_is_one_line_exit_6(shapes_dataset, tmp_path):
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    res = CliRunner().invoke(app, ["viz", "fiftyone", str(tmp_path / "w.pth"), "--data",
                                   str(shapes_dataset)])
    assert res.exit_code == 6 and "pip install 'dfine[viz]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(DependencyError):
        from dfine_cli.viz.fiftyone_export import require_fiftyone

        require_fiftyone()


@pytest.mark.skipif(not _fiftyone_can_start(), reason="FiftyOne cannot start its database here")
def test_fiftyone_dataset_with_per_sample_evaluation(fake_predictions):
    import fiftyone as fo

    from dfine_cli.viz.fiftyone_export import create_fiftyone_dataset

    dataset, predictions = fake_predictions
    name = "dfine-test-viz"
    created = create_fiftyone_dataset(to_sample_records(predictions, dataset.class_names), name,
                                      persistent=False)
    try:
        assert created["samples"] == len(predictions) and 0 < created["mAP"] <= 1
        loaded = fo.load_dataset(name)
        worst = loaded.sort_by("eval_fp", reverse=True).first()
        assert worst["eval_fp"] >= 1 and "eval_fn" in worst
    finally:
        fo.delete_dataset(name)
