"""Track ids from ByteTrack (supervision): stable across frames of moving objects."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dfine_cli.detection_filter import DetectionFilter
from dfine_cli.detector import Detections
from dfine_cli.errors import DependencyError
from dfine_cli.tracking import ByteTracker, check_tracking_available

needs_supervision = pytest.mark.skipif(importlib.util.find_spec("supervision") is None,
                                reason="the 'track' extra (supervision) is not installed")

NAMES = ["red", "green", "blue"]
STARTS = np.array([[20, 20, 80, 70], [300, 40, 360, 120], [150, 300, 230, 360]], dtype=np.float64)
VELOCITY = np.array([[4.0, 2.0], [-3.0, 3.0], [5.0, -2.0]])  # px per frame (x, y)


def truth(frame: int) -> np.ndarray:
    """Ground-truth xyxy boxes ``[3, 4]`` of the three objects at ``frame``."""
    boxes = STARTS.copy()
    boxes[:, [0, 2]] += VELOCITY[:, :1] * frame
    boxes[:, [1, 3]] += VELOCITY[:, 1:] * frame
    return boxes


def noisy_detections(frame: int, rng: np.random.Generator, drop: int | None = None) -> tuple[Detections, np.ndarray]:
    """The true boxes with 2 px noise, in a random order, optionally one object missing;
    returns the detections and which object each one is."""
    objects = rng.permutation(3)
    if drop is not None:
        objects = objects[objects != drop]
    boxes = truth(frame)[objects] + rng.normal(0.0, 2.0, (len(objects), 4))
    scores = rng.uniform(0.6, 0.95, len(objects)).astype(np.float32)
    det = Detections(boxes=boxes.astype(np.float32), scores=scores, labels=objects.astype(np.int64),
                     names=[NAMES[i] for i in objects], width=640, height=480)
    return det, objects


@needs_supervision
def test_ids_stay_with_their_objects_through_noise_reordering_and_a_missed_frame():
    rng = np.random.default_rng(0)
    tracker = ByteTracker(frame_rate=25)
    owner: dict[int, int] = {}  # track id -> object
    for frame in range(60):
        # Object 1 is missed by the detector for three frames (occlusion).
        det, objects = noisy_detections(frame, rng, drop=1 if 20 <= frame < 23 else None)
        det = tracker.update(det)
        assert det.track_ids is not None and len(det.track_ids) == len(det)
        assert (det.track_ids > 0).all(), f"frame {frame}: untracked detection {det.track_ids}"
        for obj, track_id in zip(objects, det.track_ids):
            assert owner.setdefault(int(track_id), int(obj)) == obj, f"frame {frame}: id switch"
    assert sorted(owner.values()) == [0, 1, 2]  # three ids in all: none lost and re-created


@needs_supervision
def test_a_new_object_gets_a_new_id_and_weak_detections_start_none():
    rng = np.random.default_rng(1)
    tracker = ByteTracker(frame_rate=30, new_track_conf=0.5)
    for frame in range(5):
        det, _ = noisy_detections(frame, rng, drop=2)
        tracker.update(det)
    first_ids = set(tracker.update(noisy_detections(5, rng, drop=2)[0]).track_ids.tolist())
    # Object 2 appears with a weak score: below new_track_conf it starts no track.
    det, objects = noisy_detections(6, rng)
    det.scores[objects == 2] = 0.3
    ids = tracker.update(det).track_ids
    assert ids[objects == 2].tolist() == [-1]
    assert set(ids[objects != 2].tolist()) == first_ids
    # Confident now: a new id, confirmed on its second frame; the others keep theirs.
    seen = []
    for frame in (7, 8):
        det, objects = noisy_detections(frame, rng)
        ids = tracker.update(det).track_ids
        seen.append(int(ids[objects == 2][0]))
        assert set(ids[objects != 2].tolist()) == first_ids
    assert seen[-1] > 0 and seen[-1] not in first_ids


@needs_supervision
def test_empty_frames_are_fine():
    tracker = ByteTracker()
    empty = Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                       labels=np.zeros(0, np.int64), names=[], width=64, height=48)
    assert tracker.update(empty).track_ids.tolist() == []
    record = empty.to_dict()
    assert record["detections"] == []


def test_track_ids_in_records_and_selection():
    det = Detections(boxes=np.array([[0, 0, 5, 5], [1, 1, 6, 6]], np.float32),
                     scores=np.array([0.9, 0.2], np.float32), labels=np.array([0, 2]),
                     names=["red", "blue"], width=64, height=48, category_ids=[3, 9],
                     track_ids=np.array([4, -1]))
    records = det.to_dict()["detections"]
    assert [r["track_id"] for r in records] == [4, None]
    kept = det.select(np.array([False, True]))
    assert kept.names == ["blue"] and kept.category_ids == [9] and kept.track_ids.tolist() == [-1]
    det.track_ids = None
    assert "track_id" not in det.to_dict()["detections"][0]


def test_missing_supervision_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import fails
    with pytest.raises(DependencyError, match=r"pip install 'dfine\[track\]'"):
        check_tracking_available()


def test_a_supervision_without_bytetrack_names_the_extra(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "supervision", types.SimpleNamespace(__version__="0.31.0"))
    with pytest.raises(DependencyError, match=r"supervision 0.31.0 has no ByteTrack.*dfine\[track\]"):
        ByteTracker()


# -- a synthetic video through predict_video ---------------------------------------------------

COLORS_RGB = [(230, 30, 30), (30, 200, 30), (30, 30, 230)]


def write_moving_shapes(path: Path, frames: int = 30) -> Path:
    """An MJPG video of three colored rectangles moving linearly on a gray background."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for frame in range(frames):
        image = np.full((480, 640, 3), 90, dtype=np.uint8)
        for (x1, y1, x2, y2), rgb in zip(truth(frame).round().astype(int), COLORS_RGB):
            cv2.rectangle(image, (x1, y1), (x2, y2), rgb[::-1], -1)
        writer.write(image)
    writer.release()
    return path


class ColorDetector:
    """Finds the rectangles of :func:`write_moving_shapes` by color (a deterministic stand-in
    for a model): one detection per color, labelled by it, score 0.9."""

    def __init__(self) -> None:
        self.class_names = NAMES

    def predict(self, frame: np.ndarray, conf: DetectionFilter) -> list[Detections]:
        boxes, labels = [], []
        for label, rgb in enumerate(COLORS_RGB):
            mask = (np.abs(frame.astype(int) - rgb).sum(axis=2) < 90)
            ys, xs = np.nonzero(mask)
            if len(xs) > 50:
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                labels.append(label)
        det = Detections(boxes=np.array(boxes, np.float32).reshape(-1, 4),
                         scores=np.full(len(labels), 0.9, np.float32),
                         labels=np.array(labels, np.int64), names=[NAMES[i] for i in labels],
                         width=frame.shape[1], height=frame.shape[0])
        return [det.select(conf.keep(det.labels, det.scores))]


@needs_supervision
def test_predict_video_tracks_moving_shapes(tmp_path):
    from dfine_cli.predict import run_prediction

    video = write_moving_shapes(tmp_path / "shapes.avi")
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prediction(ColorDetector(), video, out, conf=0.5, track=True)  # type: ignore[arg-type]
    assert summary.frames == 30 and summary.detections == 90
    saved = json.loads((out / "predictions.json").read_text())
    id_of: dict[str, set[int]] = {name: set() for name in NAMES}
    for record in saved["results"]:
        for d in record["detections"]:
            id_of[d["name"]].add(d["track_id"])
    assert all(len(ids) == 1 and None not in ids for ids in id_of.values()), id_of
    assert len(set.union(*id_of.values())) == 3
    assert (out / "shapes.mp4").stat().st_size > 0


@needs_supervision
def test_tracking_keeps_the_reported_threshold(tmp_path):
    """The tracker sees weak detections, the records only those passing --conf/--classes."""
    from dfine_cli.predict import run_prediction

    video = write_moving_shapes(tmp_path / "shapes.avi", frames=5)
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prediction(ColorDetector(), video, out, conf="0.95,green=0.5", classes="green,blue",  # type: ignore[arg-type]
                             track=True, save=False)
    names = {d["name"] for r in summary.records for d in r["detections"]}
    assert names == {"green"}
    assert all(d["track_id"] is not None for r in summary.records for d in r["detections"])
