"""OpenVINO IR export (``.xml`` graph + ``.bin`` weights), float32 or INT8.

The model goes through the checked ONNX export first (:func:`~dfine_cli.export.onnx.export_onnx`),
then OpenVINO converts that graph. The IR keeps the ONNX contract (inputs ``images``,
``orig_target_sizes``; outputs ``labels``, ``boxes``, ``scores``) and carries the same
metadata as the ONNX file in its ``rt_info`` under ``dfine`` (class names, category ids,
input size, ...). Weights stay float32 in the file (no FP16 compression); the precision a
CPU runs at is chosen when the model is loaded.

Both files are written under temporary names beside the target and renamed into place,
the ``.bin`` first: a reader never sees an ``.xml`` whose weights are missing or partial.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.checkpoints import ModelInfo
from dfine_cli.errors import ExportError, UsageError, require
from dfine_cli.export.int8 import DEFAULT_SCOPE
from dfine_cli.export.onnx import (
    ExportReport,
    check_export,
    check_passed,
    export_onnx,
    model_metadata,
)
from dfine_cli.fileio import _raise_write_error, remove_stale_temps, temp_dir_beside
from dfine_cli.image_size import DEFAULT_IMG_SIZE
from dfine_cli.models.dfine import DFINE, DeployModel

log = logging.getLogger("dfine.export.openvino")

#: ``rt_info`` section holding the metadata (``model.get_rt_info(["dfine", key])``).
RT_INFO_SECTION = "dfine"


@dataclass(frozen=True)
class Int8Options:
    """Post-training INT8 quantization (see :mod:`dfine_cli.export.int8`).

    ``images``: calibration images (paths); ``subset_size``: how many are used; ``scope``:
    which parts stay in floating point (a key of ``int8.IGNORED_SCOPES``).
    """

    images: Sequence[Path]
    subset_size: int = 300
    scope: str = DEFAULT_SCOPE


def export_openvino(
    model: DFINE,
    info: ModelInfo,
    output: str | Path,
    *,
    img_size: tuple[int, int] = (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE),
    opset: int = 17,
    dynamic_batch: bool = True,
    check: bool = True,
    int8: Int8Options | None = None,
) -> ExportReport:
    """Write ``output`` (``.xml``) and its ``.bin``; float32, or INT8 with ``int8``.

    With ``check``, the intermediate ONNX is checked against torch (see
    :func:`~dfine_cli.export.onnx.export_onnx`) and the float32 IR again, run by OpenVINO
    in float32, with the same tie-aware comparison; an INT8 IR is compared with the
    float32 IR on the calibration images and the figures are reported (INT8 changes
    scores by design, so they do not gate). Nothing is written if a check fails.
    """
    ov = require("openvino", "openvino")
    output = Path(output)
    if output.suffix.lower() != ".xml":
        raise UsageError(f"an OpenVINO IR is written as .xml (+ .bin), got {output.name}")
    weights = output.with_suffix(".bin")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(output.parent, output.name)  # left by a killed export
        workdir = temp_dir_beside(output)
    except OSError as exc:
        _raise_write_error(exc, output, creating=True)
    try:
        onnx_path = workdir / "model.onnx"
        report = export_onnx(model, info, onnx_path, img_size=img_size, opset=opset,
                             dynamic_batch=dynamic_batch, simplify=True, check=check)
        try:
            ov_model = ov.convert_model(str(onnx_path))
        except Exception as exc:  # OpenVINO raises several types with long reports
            raise ExportError(f"OpenVINO cannot convert the model: {_first_line(exc)}") from exc
        metadata = model_metadata(info, img_size, precision="int8" if int8 else "fp32")
        for key, value in metadata.items():
            ov_model.set_rt_info(value, [RT_INFO_SECTION, key])
        fp32_xml = workdir / "fp32.xml"
        ov.save_model(ov_model, str(fp32_xml), compress_to_fp16=False)
        if check:
            module = DeployModel(copy.deepcopy(model).cpu().float().eval().fuse()).eval()
            plain = DeployModel(copy.deepcopy(model).cpu().float().eval()).eval()
            batches = (1, 3) if dynamic_batch else (1,)
            results = check_export(module, plain, _openvino_runner(fp32_xml), batches, img_size)
            for batch, (agreement, tolerance) in results.items():
                log.info("OpenVINO IR check at batch %d: %s", batch, agreement.describe())
                if not check_passed(agreement, tolerance):
                    raise ExportError(
                        f"OpenVINO disagrees with torch at batch {batch}: {agreement.describe()} "
                        f"({tolerance.describe()})"
                    )
        final_xml = fp32_xml
        report.extra["precision"] = "fp32"
        if int8 is not None:
            from dfine_cli.export.int8 import quantize_openvino

            quantized, summary = quantize_openvino(fp32_xml, int8.images, img_size,
                                                   subset_size=int8.subset_size, scope=int8.scope)
            final_xml = workdir / "int8.xml"
            ov.save_model(quantized, str(final_xml), compress_to_fp16=False)
            report.extra["precision"] = "int8"
            report.extra["int8"] = summary
        report.path = output
        report.format = "openvino"
        report.extra["weights"] = str(weights)
        try:
            os.replace(final_xml.with_suffix(".bin"), weights)
            os.replace(final_xml, output)
        except OSError as exc:
            _raise_write_error(exc, output)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _openvino_runner(xml: Path) -> Any:
    """Run ``xml`` with OpenVINO in float32 on the CPU (the backend's own loading path)."""
    from dfine_cli.backends.openvino_backend import OpenVINOBackend

    backend = OpenVINOBackend(xml, precision="fp32")

    def run(images: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return backend(images, sizes)

    return run


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]
