"""The built-in demo: the whole life of a detector, offline, on data the package generates.

Synthetic dataset → train D-FINE-N on the CPU → evaluate (torch and exported ONNX) →
predict on validation images → annotated images and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.detector import Detector
from dfine_cli.engine.config import TrainConfig
from dfine_cli.engine.evaluate import eval_loader, make_eval_split, run_evaluation
from dfine_cli.engine.evaluator import EvalResult
from dfine_cli.engine.trainer import train
from dfine_cli.fileio import write_json
from dfine_cli.predict import run_prediction

log = logging.getLogger("dfine.demo")

Progress = Callable[[Iterable[Any], str, int | None], Iterator[Any]]


@dataclass
class DemoResult:
    output_dir: Path
    checkpoint: Path
    onnx: Path | None
    metrics: dict[str, Any]
    annotated: list[Path]


def _evaluate_detector(det: Detector, data: Path, img_size: int) -> EvalResult:
    split = make_eval_split(data / "images" / "val", data / "annotations" / "instances_val.json", img_size)
    loader = eval_loader(split.dataset, 4, 0)

    def predict(images: torch.Tensor, sizes: torch.Tensor) -> tuple[Any, Any, Any]:
        return det.backend(np.ascontiguousarray(images.numpy()), sizes.numpy().astype(np.int64))

    return run_evaluation(predict, split, loader)


def run_demo(
    output_dir: Path,
    *,
    epochs: int = 8,
    images: int = 120,
    img_size: int = 320,
    batch_size: int = 8,
    seed: int = 0,
    export: bool = True,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the demo into ``output_dir`` and return where everything went."""
    if export:  # fail before minutes of training, not after
        from dfine_cli.errors import require

        for module in ("onnx", "onnxruntime", "onnxslim"):
            require(module, "onnx")
    output_dir.mkdir(parents=True, exist_ok=True)
    data = output_dir / "data"
    summary = make_synthetic_dataset(data, num_images=images, num_classes=3, seed=seed, img_size=img_size)
    log.info("synthetic dataset: %d train / %d val images -> %s", summary.train_images,
             summary.val_images, data)
    result = train(
        TrainConfig(data=str(data), model="n", epochs=epochs, batch_size=batch_size,
                    img_size=img_size, workers=0, device="cpu", output=str(output_dir / "train"),
                    seed=seed),
        progress=progress,
    )
    checkpoint = result.best_checkpoint or result.last_checkpoint
    det = Detector.from_checkpoint(checkpoint)
    metrics: dict[str, Any] = {"train": {"epochs": result.epochs_run, "best_epoch": result.best_epoch,
                                         "history": result.history}}
    metrics["torch"] = _evaluate_detector(det, data, img_size).to_json()
    onnx_path: Path | None = None
    if export:
        from dfine_cli.export.onnx import export_onnx

        assert det.model is not None and det.info is not None
        onnx_path = output_dir / "model.onnx"
        export_onnx(det.model, det.info, onnx_path, img_size=(img_size, img_size))
        metrics["onnxruntime"] = _evaluate_detector(Detector.load(onnx_path), data, img_size).to_json()
    pred = run_prediction(det, data / "images" / "val", output_dir / "predict", conf=0.4)
    annotated = sorted((output_dir / "predict").glob("*.jpg"))
    metrics["predict"] = {"images": pred.images, "detections": pred.detections}
    write_json(output_dir / "metrics.json", {"schema_version": 1, **metrics})
    return DemoResult(output_dir, checkpoint, onnx_path, metrics, annotated)
