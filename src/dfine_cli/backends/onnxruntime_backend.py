"""ONNX Runtime backend for models exported by ``dfine export`` (or the official script)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dfine_cli.backends.base import BackendMeta
from dfine_cli.errors import CheckpointError, DependencyError, require
from dfine_cli.image_size import DEFAULT_IMG_SIZE


def read_onnx_metadata(session: object) -> dict[str, str]:
    meta = session.get_modelmeta()  # type: ignore[attr-defined]
    return dict(meta.custom_metadata_map or {})


def meta_from_onnx(session: object) -> BackendMeta:
    """Input size from the ``images`` input; class names from our metadata if present."""
    inputs = {i.name: i for i in session.get_inputs()}  # type: ignore[attr-defined]
    if "images" not in inputs or "orig_target_sizes" not in inputs:
        from dfine_cli.checkpoints import NOT_A_CHECKPOINT

        raise CheckpointError(
            f"{NOT_A_CHECKPOINT}: the ONNX model does not have the D-FINE inputs 'images' and "
            "'orig_target_sizes'"
        )
    shape = inputs["images"].shape
    try:
        h, w = int(shape[2]), int(shape[3])
    except (TypeError, ValueError):
        h, w = DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE
    custom = read_onnx_metadata(session)
    names: list[str] = json.loads(custom["class_names"]) if "class_names" in custom else []
    ids: list[int] = json.loads(custom["category_ids"]) if "category_ids" in custom else []
    if not names:
        from dfine_cli.checkpoints import ModelInfo

        # An official export carries no names: assume COCO when the output fits 80 classes.
        names, ids = ModelInfo.default_names(80)
    dynamic = not isinstance(shape[0], int)
    return BackendMeta(img_size=(h, w), class_names=names, category_ids=ids or list(range(len(names))),
                       dynamic_batch=dynamic, description="onnxruntime")


class OnnxRuntimeBackend:
    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        ort = require("onnxruntime", "onnx")
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()  # type: ignore[attr-defined]
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # type: ignore[attr-defined]
        available = ort.get_available_providers()  # type: ignore[attr-defined]
        chosen = providers or ["CPUExecutionProvider"]
        missing = [p for p in chosen if p not in available]
        if missing:
            raise DependencyError(f"ONNX Runtime provider(s) not available here: {', '.join(missing)}")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own exception types
            from dfine_cli.checkpoints import NOT_A_CHECKPOINT

            why = "is empty" if path.stat().st_size == 0 else (
                f"is not a loadable ONNX model: {str(exc).splitlines()[0][:200]}")
            raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} {why}") from exc
        self.meta = meta_from_onnx(self.session)
        self.meta.description = f"onnxruntime {ort.__version__} ({', '.join(chosen)})"  # type: ignore[attr-defined]

    def __call__(
        self, images: np.ndarray, orig_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels, boxes, scores = self.session.run(
            ["labels", "boxes", "scores"],
            {"images": np.ascontiguousarray(images, dtype=np.float32),
             "orig_target_sizes": np.ascontiguousarray(orig_sizes, dtype=np.int64)},
        )
        return labels, boxes, scores
