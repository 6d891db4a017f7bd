"""Drawing detections on images (OpenCV)."""

from __future__ import annotations

import colorsys

import numpy as np

from dfine_cli.detector import Detections


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class index (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image_rgb: np.ndarray, det: Detections) -> np.ndarray:
    """Return a BGR copy of ``image_rgb`` with boxes and ``name score`` labels drawn
    (``#track name score`` for a detection with a track id)."""
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()

    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(min(canvas.shape[:2]) / 320))
    scale = max(0.35, min(canvas.shape[:2]) / 1000)
    track_ids = det.track_ids if det.track_ids is not None else [-1] * len(det)
    for box, score, label, name, track_id in zip(det.boxes, det.scores, det.labels, det.names, track_ids):
        color = class_color(int(label))
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        text = f"#{int(track_id)} {name} {score:.2f}" if track_id >= 0 else f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y1 - th - base - 2)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
