"""INT8 post-training quantization of an OpenVINO IR with NNCF, calibrated on real images.

NNCF inserts quantize/dequantize pairs with ranges measured on the calibration images
(``nncf.quantize``, ``ModelType.TRANSFORMER`` so that attention is handled as such). The
parts of D-FINE left in floating point are chosen by :data:`IGNORED_SCOPES`:

* ``fpn`` (default): the hybrid encoder's top-down path (its lateral convs and FPN fusion
  blocks, whose output is the finest level of the decoder's memory) stays float; the
  backbone, the attention layer and bottom-up path of the encoder and the whole decoder run
  in INT8.
* ``sampling`` / ``heads`` / ``sampling+heads``: the decoder's deformable cross-attention
  (sampling offsets, attention weights, the sampling) and/or the final heads (scores, box
  distributions and their integral, the quality estimate, the encoder's query-selection
  heads) stay float.
* ``decoder``: the whole decoder stays float.
* ``none``: everything NNCF can quantize.

The default is chosen by measurement (``benchmarks/bench_int8.py``, 2 threads, 320x320,
calibrated on the train split, AP on the val split; docs/deploy.md has the tables). On the
demo model (D-FINE-N from ``dfine demo``, 8.46 AP on 24 val images), quantizing everything
lost 1.58 AP, and keeping the decoder's sampling and heads, or the whole decoder, float did
not help (-1.65, -1.68): the loss comes from the encoder. Keeping parts of the encoder float
located it: keeping only the top-down path float recovers it (-0.27); keeping only the
bottom-up path, the attention layer or the backbone float does not (-1.10, -1.89, -1.38).
On a BCCD model (16.62 AP, 87 val images) every scope lost about 0.4 AP (``fpn`` -0.42). ``fpn`` costs about 10% of the model time against
``none`` and is faster than ``sampling+heads``; OpenVINO BF16, which on that CPU (an Intel
Xeon VM: AVX-512 BF16, no AMX) was slower than FP32, lost 0.61 and 1.36 AP on the same two
models. On an AMD Zen 4 CPU BF16 is the faster one, and an INT8 IR run with ``--bf16`` (its
float parts in bf16) the fastest path (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.errors import DataError, UsageError, require

log = logging.getLogger("dfine.export.int8")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: The decoder's deformable cross-attention: sampling offsets, attention weights, the
#: sampling itself and its weighted sum.
_SAMPLING = [r".*/model/decoder/layers\.\d+/cross_attn/.*"]
#: The final heads: class scores, box distributions and their integral (FDR), the
#: localization-quality estimate, and the encoder's query-selection heads.
_HEADS = [
    r".*/model/decoder/dec_score_head.*",
    r".*/model/decoder/dec_bbox_head.*",
    r".*/model/decoder/pre_bbox_head/.*",
    r".*/model/decoder/enc_score_head/.*",
    r".*/model/decoder/enc_bbox_head/.*",
    r".*/model/decoder/lqe_layers.*",
    r".*/model/decoder/MatMul(_\d+)?$",  # the distribution integral, eq. (4) of the paper
]

#: The hybrid encoder's top-down path: the lateral convs and the FPN fusion blocks, whose
#: output is the finest level of the decoder's memory.
_FPN = [r".*/model/encoder/(lateral_convs|fpn_blocks)\.\d+/.*"]

#: Node-name patterns (regular expressions over OpenVINO friendly names, which keep the
#: torch module path) left in floating point, per scope choice.
IGNORED_SCOPES: dict[str, list[str]] = {
    "none": [],
    "fpn": _FPN,
    "sampling": _SAMPLING,
    "heads": _HEADS,
    "sampling+heads": _SAMPLING + _HEADS,
    "decoder": [r".*/model/decoder/.*"],
}
DEFAULT_SCOPE = "fpn"
#: The accuracy INT8 is held to: COCO AP (0..1) at most this far below float32 on the same
#: data (the goal on the demo model; ``benchmarks/bench_int8.py`` measures it per scope).
INT8_AP_TOLERANCE = 0.015


def scope_patterns(scope: str, name: str = "INT8 scope") -> list[str]:
    """The node-name patterns ``scope`` leaves in floating point; an unknown scope is a
    :class:`UsageError` naming it as ``name`` (the option it came from) and the valid ones."""
    if scope not in IGNORED_SCOPES:
        raise UsageError(f"unknown {name} {scope!r}; one of {', '.join(IGNORED_SCOPES)}")
    return IGNORED_SCOPES[scope]


def kept_float(node_name: str, scope: str) -> bool:
    """Whether ``scope`` leaves the OpenVINO node ``node_name`` in floating point.

    Matches the way NNCF applies ``IgnoredScope.patterns`` (``re.match``: anchored at the
    start of the name only).
    """
    return any(re.match(pattern, node_name) for pattern in scope_patterns(scope))


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
    patterns = scope_patterns(scope)
    if not images:
        raise DataError("INT8 quantization needs calibration images")
    if not log.isEnabledFor(logging.DEBUG):
        nncf.set_log_level(logging.WARNING)  # its per-node INFO lines are not for users
    model = ov.Core().read_model(str(fp32_xml))
    items = list(_calibration_items(images, img_size))
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
