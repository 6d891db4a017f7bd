"""INT8 post-training quantization of an OpenVINO IR with NNCF, calibrated on real images.

NNCF inserts quantize/dequantize pairs with ranges measured on the calibration images
(``nncf.quantize``, ``ModelType.TRANSFORMER`` so that attention is handled as such). The
parts of D-FINE whose small numeric errors move boxes or reorder scores stay in floating
point, chosen by :data:`IGNORED_SCOPES`:

* ``decoder`` (default): the whole decoder (queries, deformable sampling, heads) and the
  encoder's query selection stay float; the backbone and the hybrid encoder, which hold
  nearly all of the convolution work, run in INT8.
* ``heads``: only the decoder's sampling offsets / attention weights and every box/score
  head (the usual suspects) stay float.
* ``none``: everything NNCF can quantize.

See docs/deploy.md for the measurements behind the default.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.errors import DataError, UsageError, require

log = logging.getLogger("dfine.export.int8")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: Node-name patterns (regular expressions over OpenVINO friendly names, which keep the
#: torch module path) left in floating point, per scope choice.
IGNORED_SCOPES: dict[str, list[str]] = {
    "decoder": [r".*/model/decoder/.*"],
    "heads": [
        r".*/cross_attn/sampling_offsets/.*",
        r".*/cross_attn/attention_weights/.*",
        r".*/dec_score_head.*",
        r".*/dec_bbox_head.*",
        r".*/pre_bbox_head/.*",
        r".*/enc_score_head/.*",
        r".*/enc_bbox_head/.*",
        r".*/lqe_layers.*",
        r".*/query_pos_head/.*",
    ],
    "none": [],
}
DEFAULT_SCOPE = "decoder"


def calibration_images(data: str | Path, count: int, seed: int = 0) -> list[Path]:
    """Up to ``count`` images from ``data``, a dataset folder (its ``images/train`` when
    present, else every image below it) or a plain folder of images.

    A deterministic random sample (``seed``) when there are more, so that calibration sees
    the variety of the set rather than its first files.
    """
    if count < 1:
        raise UsageError(f"--calib-images must be at least 1, got {count}")
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"calibration data folder not found: {root}")
    train = root / "images" / "train"
    search = train if train.is_dir() else root
    files = sorted(p for p in search.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {search}")
    if len(files) > count:
        files = sorted(random.Random(seed).sample(files, count))
    return files


def _calibration_items(images: Sequence[Path], img_size: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
    """Model inputs, one image at a time, preprocessed exactly as ``predict`` does."""
    from dfine_cli.detector import preprocess
    from dfine_cli.media import read_image_rgb

    for path in images:
        rgb = read_image_rgb(path)
        yield {
            "images": preprocess([rgb], img_size),
            "orig_target_sizes": np.array([[rgb.shape[1], rgb.shape[0]]], dtype=np.int64),
        }


def quantize_openvino(
    fp32_xml: Path,
    images: Sequence[Path],
    img_size: tuple[int, int],
    *,
    subset_size: int = 300,
    scope: str = DEFAULT_SCOPE,
) -> tuple[Any, dict[str, object]]:
    """Quantize the float32 IR ``fp32_xml`` to INT8; returns the OpenVINO model and a summary.

    ``images``: calibration image paths (all are read; NNCF uses up to ``subset_size``).
    ``scope``: a key of :data:`IGNORED_SCOPES`.
    """
    ov = require("openvino", "openvino")
    nncf = require("nncf", "int8")
    if scope not in IGNORED_SCOPES:
        raise UsageError(f"unknown INT8 scope {scope!r}; one of {', '.join(IGNORED_SCOPES)}")
    if not images:
        raise DataError("INT8 quantization needs calibration images")
    if not log.isEnabledFor(logging.DEBUG):
        nncf.set_log_level(logging.WARNING)  # its per-node INFO lines are not for users
    model = ov.Core().read_model(str(fp32_xml))
    items = list(_calibration_items(images, img_size))
    patterns = IGNORED_SCOPES[scope]
    ignored = nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
    start = time.perf_counter()
    try:
        # NNCF draws its progress on stdout; stdout carries results (e.g. --json) here
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                model,
                nncf.Dataset(items),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=min(subset_size, len(items)),
                ignored_scope=ignored,
            )
    except Exception as exc:  # NNCF and OpenVINO raise many types
        from dfine_cli.errors import ExportError

        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise ExportError(f"INT8 quantization failed: {(lines[-1] if lines else type(exc).__name__)[:200]}") from exc
    seconds = time.perf_counter() - start
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    log.info("INT8: %d quantization points, %d calibration images, scope %s, %.1f s",
             fake_quantize, min(subset_size, len(items)), scope, seconds)
    for key, value in (("precision", "int8"), ("int8_scope", scope),
                       ("calibration_images", str(min(subset_size, len(items))))):
        quantized.set_rt_info(value, ["dfine", key])
    return quantized, {
        "scope": scope,
        "ignored_patterns": patterns,
        "calibration_images": min(subset_size, len(items)),
        "quantization_points": fake_quantize,
        "seconds": round(seconds, 1),
    }
