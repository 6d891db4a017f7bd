"""--classes and per-class --conf: one parser, classes by name or id, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from dfine_cli.detection_filter import DetectionFilter, FilterSpec, detection_filter
from dfine_cli.errors import UsageError

NAMES = ["person", "bicycle", "car", "traffic light", "7", "dog", "cat", "horse", "sheep", "cow"]


def resolve(conf=None, classes=None, default=0.4) -> DetectionFilter:
    return FilterSpec.parse(conf, classes).resolve(NAMES, default)


@pytest.mark.parametrize(
    ("conf", "default", "per_class"),
    [
        (0.25, 0.25, {}),
        ("0.25", 0.25, {}),
        ("person=0.5,car=0.3", 0.4, {0: 0.5, 2: 0.3}),
        ("0.3,person=0.5", 0.3, {0: 0.5}),
        ("person=0.5, 0.2", 0.2, {0: 0.5}),
        (" traffic light = 0.6 ", 0.4, {3: 0.6}),
        ("2=0.1", 0.4, {2: 0.1}),
        ("PERSON=0.5", 0.4, {0: 0.5}),
        ({"car": 0.3, "*": 0.6}, 0.6, {2: 0.3}),
        ({2: 0.3}, 0.4, {2: 0.3}),
        (None, 0.4, {}),
    ],
)
def test_conf_forms(conf, default, per_class):
    got = resolve(conf)
    assert got.default_conf == default and dict(got.class_conf) == per_class and got.classes is None


def test_a_class_named_like_a_number_is_found_by_name_first():
    assert dict(resolve("7=0.9").class_conf) == {4: 0.9}
    assert resolve(classes="7").classes == {4}
    assert resolve(classes=[7]).classes == {7}  # an int is always an id


@pytest.mark.parametrize(
    ("classes", "expected"),
    [("person,car", {0, 2}), ("0,2", {0, 2}), (["dog", 1], {5, 1}), ("traffic light", {3}),
     ("Car", {2})],
)
def test_classes_by_name_or_id(classes, expected):
    assert resolve(classes=classes).classes == expected


@pytest.mark.parametrize(
    ("conf", "classes", "message"),
    [
        ("persn=0.5", None, r"conf: unknown class 'persn' \(did you mean 'person'\?\); valid names: person, bicycle, car, traffic light, 7, dog, cat, horse, \.\.\. \(10 classes\), or ids 0\.\.9"),
        (None, "truck,car", r"classes: unknown class 'truck'; valid names: person"),
        (None, "10", r"classes: class id 10 is out of range: the model has 10 classes \(ids 0\.\.9\)"),
        (None, "-1", r"class id -1 is out of range"),
        (None, [2.5], r"classes: expected class names or ids, got 2.5"),
    ],
)
def test_unknown_classes_are_named(conf, classes, message):
    with pytest.raises(UsageError, match=message):
        resolve(conf, classes)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ("abc", r"conf: 'abc' is not a number"),
        ("1.5", r"conf: '1.5' is not a score in 0\.\.1"),
        ("person=x", r"conf: 'person=x' is not a number"),
        ("person=-0.1", r"'person=-0\.1' is not a score in 0\.\.1"),
        ("nan", r"'nan' is not a score"),
        ("0.3,0.4", r"two default thresholds"),
        ("person=0.5,,car=0.3", r"empty entry"),
        ("=0.5", r"empty class name"),
        ("person=0.5,person=0.6", r"class 'person' is given two thresholds"),
        (2.0, r"'2.0' is not a score"),
    ],
)
def test_bad_conf_syntax_fails_before_any_model(conf, message):
    with pytest.raises(UsageError, match=message):
        FilterSpec.parse(conf)


def test_empty_class_list_is_refused():
    with pytest.raises(UsageError, match="classes: empty list"):
        FilterSpec.parse(classes=[])


def test_keep_mask_applies_thresholds_per_class_and_the_class_list():
    keep = resolve("0.3,person=0.5,car=0.2", classes="person,car,dog")
    labels = np.array([0, 0, 2, 2, 5, 5, 1])
    scores = np.array([0.6, 0.45, 0.25, 0.1, 0.35, 0.25, 0.99])
    assert keep.keep(labels, scores).tolist() == [True, False, True, False, True, False, False]
    assert keep.min_conf == 0.2
    low = keep.with_floor(0.1)
    assert low.default_conf == 0.1 and dict(low.class_conf) == {0: 0.1, 2: 0.1} and low.classes == keep.classes
    assert keep.describe(NAMES) == "conf 0.3 (person 0.5, car 0.2); classes person, car, dog"


def test_min_conf_ignores_classes_that_are_not_kept():
    assert resolve("0.5,car=0.1", classes="person").min_conf == 0.5


def test_detection_filter_accepts_every_form():
    ready = DetectionFilter(default_conf=0.2, class_conf={1: 0.9})
    assert detection_filter(ready, None, NAMES, 0.4) is ready
    with pytest.raises(UsageError, match="inside the DetectionFilter"):
        detection_filter(ready, "car", NAMES, 0.4)
    spec = FilterSpec.parse("person=0.5")
    assert detection_filter(spec, "car", NAMES, 0.4) == DetectionFilter(0.4, {0: 0.5}, frozenset({2}))
    assert detection_filter(0.7, None, NAMES, 0.4) == DetectionFilter(0.7)


# -- the Python API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from dfine_cli.detector import Detector
    from tests.helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pth", names=["a", "b", "c"])
    return Detector.from_checkpoint(path)


LABELS = np.array([0, 1, 2, 0, 1, 2, 2, 2])
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], dtype=np.float32)


@pytest.fixture
def fixed_outputs(detector, monkeypatch):
    """The model's raw outputs replaced by known ones (labels of every class, sorted scores)."""
    def infer_batch(images):
        boxes = np.tile(np.array([[1.0, 2.0, 30.0, 40.0]], np.float32), (len(LABELS), 1))
        n = len(images)
        return np.stack([LABELS] * n), np.stack([boxes] * n), np.stack([SCORES] * n)

    monkeypatch.setattr(detector, "infer_batch", infer_batch)
    return detector


def test_detector_predict_filters_by_class_and_per_class_conf(fixed_outputs, rgb_image):
    detector = fixed_outputs
    only_b = detector.predict(rgb_image, conf=0.0, classes="b")[0]
    assert only_b.names == ["b", "b"] and only_b.scores.tolist() == pytest.approx([0.8, 0.5])
    mixed = detector.predict(rgb_image, conf={"*": 0.35, "a": 0.7})[0]
    assert mixed.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.5, 0.4])
    text = detector.predict([rgb_image, rgb_image], conf="0.45,c=0.2", classes="c,a", batch_size=2)
    assert [d.scores.tolist() for d in text] == [pytest.approx([0.9, 0.7, 0.6, 0.4, 0.3, 0.2])] * 2
    with pytest.raises(UsageError, match="unknown class 'person'"):
        detector.predict(rgb_image, classes="person")


def test_max_det_counts_the_kept_detections(fixed_outputs, rgb_image):
    top = fixed_outputs.predict(rgb_image, conf=0.0, classes=["c"], max_det=3)[0]
    assert top.scores.tolist() == pytest.approx([0.7, 0.4, 0.3])
    plain = fixed_outputs.predict(rgb_image, conf=0.45, max_det=2)[0]
    assert plain.scores.tolist() == pytest.approx([0.9, 0.8])
