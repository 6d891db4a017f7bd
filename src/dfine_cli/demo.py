"""The built-in demo: everything runs offline on data the package generates itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfine_cli.detector import Detector
from dfine_cli.draw import draw_detections
from dfine_cli.fileio import atomic_path, write_json

log = logging.getLogger("dfine.demo")


def demo_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic RGB test image: a gradient background with filled shapes."""
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 53.0)], -1)
    image = (base * 200 + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(6):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(40, width - 120)), int(rng.integers(40, height - 120))
        w, h = int(rng.integers(40, 110)), int(rng.integers(40, 110))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + w, y + h), color, -1)
        else:
            cv2.ellipse(image, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, color, -1)
    return image


@dataclass
class DemoResult:
    output_dir: Path
    image_path: Path
    annotated_path: Path
    detections: int


def run_demo(
    output_dir: Path, size: str = "n", conf: float = 0.0, seed: int = 0, max_det: int = 10
) -> DemoResult:
    """Generate an image, build a randomly initialised model, predict, write the results.

    The weights are random: detections are meaningless and only show that the whole path
    (model construction, preprocessing, inference, postprocessing, drawing) works offline.
    """
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()

    output_dir.mkdir(parents=True, exist_ok=True)
    image = demo_image(seed=seed)
    image_path = output_dir / "demo_input.jpg"
    with atomic_path(image_path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    detector = Detector.from_preset(size, num_classes=80, seed=seed)
    det = detector.predict(image, conf=conf, max_det=max_det)[0]
    det.path = str(image_path)
    annotated = output_dir / "demo_prediction.jpg"
    with atomic_path(annotated) as tmp:
        cv2.imwrite(str(tmp), draw_detections(image, det))
    write_json(output_dir / "predictions.json", {"schema_version": 1, "results": [det.to_dict()],
                                                  "weights": "random initialisation"})
    return DemoResult(output_dir, image_path, annotated, len(det))
