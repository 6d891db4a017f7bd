"""Track ids across the frames of a video: ByteTrack, as the ``supervision`` package implements it.

ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection
Box", ECCV 2022) predicts every track's box with a Kalman filter and matches it to the new
detections by IoU, in two rounds: first the confident detections, then the weak ones
(score 0.1 and up), which keep a track alive through occlusion and blur. So the tracker
should see weak detections as well; :data:`TRACK_LOW_SCORE` is the lowest score it uses,
and the caller reports only the detections that pass the user's threshold.

We use the implementation of the ``supervision`` package (the ``track`` extra) rather than
writing our own: it is maintained, tested against the paper's behaviour, and needs nothing
beyond numpy and scipy. Versions 0.30.x are supported: earlier ones require the GUI build
of OpenCV (which clashes with ``opencv-python-headless``), and 0.31 moved ByteTrack to the
separate ``trackers`` package.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dfine_cli.detector import Detections
from dfine_cli.errors import DependencyError, require

TRACK_LOW_SCORE = 0.1
"""Detections below this score never reach a track (ByteTrack's second-round floor)."""

_EXTRA = "track"


def _bytetrack_class() -> Any:
    """supervision's ``ByteTrack``; :class:`DependencyError` naming the extra if absent."""
    supervision = require("supervision", _EXTRA)
    cls = getattr(supervision, "ByteTrack", None)
    if cls is None:
        version = getattr(supervision, "__version__", "?")
        raise DependencyError(
            f"supervision {version} has no ByteTrack (it moved to another package in 0.31); "
            f"install a supported version with: pip install 'dfine[{_EXTRA}]'"
        )
    return cls


def check_tracking_available() -> None:
    """Raise :class:`DependencyError` (exit 6, naming the ``track`` extra) unless a tracker
    can be made; call it before loading a model for a tracked run."""
    _bytetrack_class()


class ByteTracker:
    """Assigns track ids to the detections of consecutive frames of one video.

    ``frame_rate``: frames per second of the video (scales how long a lost track is kept);
    ``new_track_conf``: the score a detection needs to start a track; ``lost_frames``:
    frames (at 30 frames/s) a track survives without a matching detection;
    ``match_cost``: the largest matching cost (1 − IoU, weighted by score) of a first-round
    match. Track ids are positive integers, stable while a track lives, never reused.
    """

    def __init__(
        self,
        *,
        frame_rate: float = 30.0,
        new_track_conf: float = 0.4,
        lost_frames: int = 30,
        match_cost: float = 0.8,
    ) -> None:
        bytetrack = _bytetrack_class()
        # supervision starts tracks at ``track_activation_threshold + 0.1`` and splits strong
        # from weak detections at ``track_activation_threshold``.
        activation = min(max(new_track_conf - 0.1, 0.0), 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its deprecation notice (0.30)
            self._tracker = bytetrack(
                track_activation_threshold=activation,
                lost_track_buffer=lost_frames,
                minimum_matching_threshold=match_cost,
                frame_rate=max(float(frame_rate), 1.0),
                minimum_consecutive_frames=1,
            )
        self._supervision = require("supervision", _EXTRA)

    def update(self, detections: Detections) -> Detections:
        """Feed the next frame's detections; returns them (same order) with ``track_ids``.

        ``track_ids`` ``[K]`` int64: the track of each detection, ``-1`` for one that is in
        no confirmed track (too weak to start one, or a new object's first frame after the
        video's first frame).
        """
        n = len(detections)
        boxes = np.asarray(detections.boxes, dtype=np.float32).reshape(n, 4)
        frame = self._supervision.Detections(
            xyxy=boxes,
            confidence=np.asarray(detections.scores, dtype=np.float32),
            class_id=np.asarray(detections.labels, dtype=np.int64),
            data={"index": np.arange(n)},
        )
        tracked = self._tracker.update_with_detections(frame)
        track_ids = np.full(n, -1, dtype=np.int64)
        if len(tracked):
            track_ids[np.asarray(tracked.data["index"], dtype=np.int64)] = tracked.tracker_id
        detections.track_ids = track_ids
        return detections
