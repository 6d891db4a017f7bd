"""The built-in demo: the whole life of a detector, offline, on data the package generates.

Synthetic dataset → train D-FINE-N from scratch on the CPU (``pretrained=False``: nothing is
downloaded) → evaluate (torch and exported ONNX) → predict on validation images → annotated
images and metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the rest is imported by run_demo: `dfine demo --help` starts without torch
    from dfine_cli.progress import Progress

log = logging.getLogger("dfine.demo")

@dataclass
class DemoResult:
    output_dir: Path
    checkpoint: Path
    onnx: Path | None
    metrics: dict[str, Any]
    annotated: list[Path]


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
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.detector_options import DEFAULT_CONF
    from dfine_cli.engine.config import TrainConfig
    from dfine_cli.engine.evaluate import evaluate, open_split
    from dfine_cli.engine.trainer import train
    from dfine_cli.fileio import write_json
    from dfine_cli.predict import run_prediction

    if export:  # fail before minutes of training, not after
        from dfine_cli.errors import require

        for module in ("onnx", "onnxruntime", "onnxslim"):
            require(module, "onnx")
    output_dir.mkdir(parents=True, exist_ok=True)
    data = output_dir / "data"
    summary = make_synthetic_dataset(data, num_images=images, num_classes=3, seed=seed, img_size=img_size)
    log.info("synthetic dataset: %d train / %d val images -> %s", summary.train_images,
             summary.val_images, data)
    log.info("training from scratch (no pretrained backbone, so the demo stays offline; "
             "'dfine train' starts from ImageNet HGNetv2 weights by default)")
    result = train(
        TrainConfig(data=str(data), model="n", epochs=epochs, batch_size=batch_size,
                    img_size=img_size, workers=0, device="cpu", output=str(output_dir / "train"),
                    seed=seed, pretrained=False),
        progress=progress,
    )
    checkpoint = result.best_checkpoint or result.last_checkpoint
    det = Detector.from_checkpoint(checkpoint)
    metrics: dict[str, Any] = {"train": {"epochs": result.epochs_run, "best_epoch": result.best_epoch,
                                         "history": result.history}}
    val = open_split(data, "val")
    metrics["torch"] = evaluate(det, val).result.to_json()
    onnx_path: Path | None = None
    if export:
        from dfine_cli.export.onnx import export_onnx

        assert det.model is not None and det.info is not None
        onnx_path = output_dir / "model.onnx"
        export_onnx(det.model, det.info, onnx_path, img_size=(img_size, img_size))
        onnx_det = Detector.load(onnx_path)
        metrics["onnxruntime"] = evaluate(onnx_det, val).result.to_json()
    pred = run_prediction(det, data / "images" / "val", output_dir / "predict", conf=DEFAULT_CONF)
    annotated = sorted((output_dir / "predict").glob("*.jpg"))
    metrics["predict"] = {"images": pred.images, "detections": pred.detections}
    write_json(output_dir / "metrics.json", {"schema_version": 1, **metrics})
    return DemoResult(output_dir, checkpoint, onnx_path, metrics, annotated)


#: The smallest image side the demo's shapes stay recognisable at, in pixels.
MIN_DEMO_IMG_SIZE = 320


def demo_in_run_folder(
    output: Path | None = None,
    *,
    epochs: int = 8,
    images: int = 120,
    img_size: int = MIN_DEMO_IMG_SIZE,
    seed: int = 0,
    export: bool = True,
    progress: Progress | None = None,
) -> DemoResult:
    """``dfine demo``: :func:`run_demo` into ``output`` or the next ``runs/demo/exp{N}``.

    ``img_size`` (pixels) must be a multiple of 32 and at least :data:`MIN_DEMO_IMG_SIZE`.
    A folder created here is removed again if the demo fails before writing into it.
    """
    from dfine_cli.errors import UsageError
    from dfine_cli.fileio import run_dir
    from dfine_cli.image_size import check_img_size

    check_img_size(img_size, name="--img-size")
    if img_size < MIN_DEMO_IMG_SIZE:
        raise UsageError(f"--img-size must be at least {MIN_DEMO_IMG_SIZE} for the demo, got {img_size}")
    with run_dir("demo", output) as out:
        return run_demo(out, epochs=epochs, images=images, img_size=img_size, seed=seed,
                        export=export, progress=progress)
