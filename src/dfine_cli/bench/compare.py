"""Several deployment options in one table: latency next to mAP on a dataset.

An option is ``BACKEND[:PRECISION]`` (``torch``, ``onnxruntime``, ``openvino:bf16``,
``openvino:int8``, ``openvino:int8+bf16``, ``tensorrt``...), run for every weights file
given. ``openvino:int8`` quantizes the checkpoint first (NNCF, see
:mod:`dfine_cli.export.int8`), calibrated on the dataset's ``train`` split (the evaluated
split when there is none), so FP32, BF16 and INT8 appear side by side;
``openvino:int8+bf16`` runs the same IR with its float parts in bf16. Every option is
validated before any is measured, so a typo fails at once instead of after minutes of
measuring. The first row is the reference: ``delta_ap`` is each row's AP minus the
reference's AP on the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfine_cli.backends import BACKENDS, PRECISIONS, check_precision
from dfine_cli.bench.latency import (
    Stats,
    is_preset_name,
    load_bench_detector,
    measure_latency,
    synthetic_images,
)
from dfine_cli.errors import UsageError
from dfine_cli.hub import is_weights_name
from dfine_cli.progress import Progress

log = logging.getLogger("dfine.bench.compare")

#: Calibration images for ``openvino:int8`` (the ``dfine export --calib-images`` default).
INT8_CALIB_IMAGES = 300
#: ``int8``: the INT8 IR as ``dfine predict IR.xml`` runs it; ``int8+bf16``: its float parts in
#: bf16, as ``dfine predict IR.xml --bf16`` runs it (CPUs with bf16).
INT8_PRECISIONS = ("int8", "int8+bf16")

COLUMNS = ("weights", "backend", "precision", "median ms", "p90 ms", "images/s", "AP", "AP50",
           "delta AP")


@dataclass(frozen=True)
class RunSpec:
    backend: str
    precision: str = "fp32"

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.precision}"


def parse_run(text: str) -> RunSpec:
    """``"openvino:bf16"`` -> ``RunSpec("openvino", "bf16")``; precision defaults to fp32."""
    backend, _, precision = text.strip().lower().partition(":")
    precision = precision or "fp32"
    if backend not in BACKENDS:
        raise UsageError(f"--run {text!r}: backend must be one of {', '.join(BACKENDS)}")
    if precision in INT8_PRECISIONS:
        if backend != "openvino":
            raise UsageError(f"--run {text!r}: int8 runs on openvino only (openvino:{precision})")
        return RunSpec(backend, precision)
    if precision not in PRECISIONS:
        raise UsageError(f"--run {text!r}: precision must be one of {', '.join(PRECISIONS)}")
    return RunSpec(backend, precision)


def default_runs(int8: bool = False) -> list[RunSpec]:
    """torch fp32, ONNX Runtime, and OpenVINO fp32 (+ bf16 where the CPU has it) if installed;
    with ``int8`` (a dataset to calibrate on is given) also OpenVINO INT8 where NNCF is installed
    (+ INT8 with its float parts in bf16 where the CPU has bf16)."""
    import importlib.util

    from dfine_cli.bench.latency import cpu_description

    runs = [RunSpec("torch"), RunSpec("onnxruntime")]
    if importlib.util.find_spec("openvino") is not None:
        runs.append(RunSpec("openvino"))
        if cpu_description()["bf16"]:
            runs.append(RunSpec("openvino", "bf16"))
        if int8 and importlib.util.find_spec("nncf") is not None:
            runs.append(RunSpec("openvino", "int8"))
            if cpu_description()["bf16"]:
                runs.append(RunSpec("openvino", "int8+bf16"))
    return runs


def runs_for(weights: str, runs: Sequence[RunSpec]) -> list[RunSpec]:
    """The options that apply to ``weights`` (an engine only runs on tensorrt, etc.)."""
    suffix = Path(weights).suffix.lower()
    if suffix in (".engine", ".trt", ".plan"):
        return [r for r in runs if r.backend == "tensorrt"]
    if suffix == ".onnx":
        return [r for r in runs if r.backend in ("onnxruntime", "openvino")
                and r.precision not in INT8_PRECISIONS]
    if suffix == ".xml":  # OpenVINO IR: its precision is in the file
        return [r for r in runs if r.backend == "openvino" and r.precision in ("fp32", "bf16")]
    return [r for r in runs if r.backend != "tensorrt"]


@dataclass
class CompareRow:
    weights: str
    run: RunSpec
    latency: Stats  # end to end, per batch
    batch_size: int
    description: str
    ap: float | None = None
    ap50: float | None = None
    delta_ap: float | None = None

    @property
    def throughput(self) -> float:
        return 1000.0 * self.batch_size / self.latency.median_ms

    def cells(self) -> tuple[str, ...]:
        def pct(v: float | None, signed: bool = False) -> str:  # AP as a fraction, as in eval
            if v is None:
                return "-"
            return f"{v:+.4f}" if signed else f"{v:.4f}"

        return (
            Path(self.weights).name, self.run.backend, self.run.precision,
            f"{self.latency.median_ms:.1f}", f"{self.latency.p90_ms:.1f}", f"{self.throughput:.2f}",
            pct(self.ap), pct(self.ap50), pct(self.delta_ap, signed=True),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "backend": self.run.backend,
            "precision": self.run.precision,
            "backend_description": self.description,
            "batch_size": self.batch_size,
            "latency": self.latency.to_dict(),
            "throughput_images_per_s": round(self.throughput, 3),
            "AP": self.ap,
            "AP50": self.ap50,
            "delta_AP": self.delta_ap,
        }


def compare(
    weights: Sequence[str],
    runs: Sequence[RunSpec],
    *,
    data: str | Path | None = None,
    split: str = "val",
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 1,
    img_size: int | None = None,
    warmup: int = 5,
    iters: int = 20,
    max_images: int | None = None,
    work_dir: Path,
    progress: Progress | None = None,
) -> list[CompareRow]:
    """Measure every applicable (weights, run) pair; with ``data``, also its COCO AP."""
    if not weights:
        raise UsageError("give at least one weights file")
    from dfine_cli.devices import resolve_backend_device

    plan: list[tuple[str, RunSpec, str]] = []  # weights, run, the device it runs on
    for w in weights:
        if not is_preset_name(w) and not Path(w).exists() and not is_weights_name(w):
            raise UsageError(f"weights not found: {w}")
        applicable = runs_for(w, runs)
        if not applicable:
            raise UsageError(f"none of the runs {[r.label for r in runs]} applies to {w}")
        for run in applicable:
            run_device = str(resolve_backend_device(run.backend, device))
            if run.precision in INT8_PRECISIONS:
                if data is None:
                    raise UsageError(f"{run.label} needs --data: its images calibrate the "
                                     "quantization")
                if run_device != "cpu":
                    raise UsageError(f"{run.label} runs on the CPU (--device cpu)")
            else:
                check_precision(run.backend, run.precision, run_device)
            plan.append((w, run, run_device))
    # bf16 on a CPU without it fails here, once, not after the other rows were measured
    reduced = {r.precision.removeprefix("int8+") for _, r, _ in plan if r.backend == "openvino"}
    for precision in sorted(reduced - {"fp32", "int8"}):
        from dfine_cli.backends.openvino_backend import check_openvino_precision

        check_openvino_precision(precision)
    dataset = None
    if data is not None:
        from dfine_cli.engine.evaluate import open_split

        dataset = open_split(data, split)
    if threads:
        torch.set_num_threads(threads)
    onnx_cache: dict[str, Path] = {}
    int8_cache: dict[str, Path] = {}
    images = synthetic_images(max(batch_size, 4), 640, 480)
    rows: list[CompareRow] = []
    reference_ap: dict[str, float] = {}
    for w, run, run_device in plan:
        log.info("measuring %s on %s", w, run.label)
        if run.precision in INT8_PRECISIONS:
            assert data is not None
            if w not in int8_cache:  # int8 and int8+bf16 run the same IR
                int8_cache[w] = int8_model(w, data, split, img_size=img_size, work_dir=work_dir)
            loaded = load_bench_detector(int8_cache[w], backend="openvino",
                                         precision="fp32" if run.precision == "int8" else "bf16",
                                         device=run_device, threads=threads, work_dir=work_dir)
            loaded.precision = run.precision
        else:
            loaded = load_bench_detector(w, backend=run.backend, precision=run.precision,
                                         device=run_device, threads=threads, img_size=img_size,
                                         work_dir=work_dir, onnx_cache=onnx_cache)
        stats = measure_latency(loaded.detector, images, batch_size=batch_size, warmup=warmup,
                                iters=iters)
        row = CompareRow(w, RunSpec(run.backend, loaded.precision), stats["end_to_end"],
                         batch_size, loaded.detector.backend.meta.description)
        if dataset is not None:
            from dfine_cli.engine.evaluate import evaluate

            result = evaluate(loaded.detector, dataset, batch_size=batch_size, limit=max_images,
                              progress=progress).result
            row.ap, row.ap50 = _finite(result.stats["AP"]), _finite(result.stats["AP50"])
            if row.ap is not None:
                base = reference_ap.setdefault(w, row.ap)
                row.delta_ap = row.ap - base
        rows.append(row)
    return rows


def int8_model(
    weights: str, data: str | Path, split: str, *, img_size: int | None, work_dir: Path,
    calib_images: int = INT8_CALIB_IMAGES,
) -> Path:
    """Quantize ``weights`` (checkpoint or preset) to an INT8 OpenVINO IR in ``work_dir``.

    Calibrated on up to ``calib_images`` images of ``data``'s ``train`` split, or of
    ``split`` when the dataset has no ``train`` split (then said in the log).
    """
    from dfine_cli.data.cocofile import resolve_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.errors import DataError
    from dfine_cli.export.int8 import calibration_images
    from dfine_cli.export.openvino_ir import Int8Options, export_openvino
    from dfine_cli.image_size import DEFAULT_IMG_SIZE, check_img_size

    try:
        folder = resolve_dataset(data, "train").images_dir
    except (DataError, UsageError):
        log.warning("no train split in %s: calibrating INT8 on the %s split it is evaluated on",
                    data, split)
        folder = resolve_dataset(data, split).images_dir
    size = check_img_size(img_size) if img_size else None
    if is_preset_name(weights):
        det = Detector.from_preset(weights.lower(), num_classes=80, img_size=size or DEFAULT_IMG_SIZE)
    else:
        det = Detector.from_checkpoint(weights)
    assert det.model is not None and det.info is not None
    hw = size or det.img_size
    xml = work_dir / f"{Path(weights).stem}_{hw[0]}x{hw[1]}_int8.xml"
    options = Int8Options(calibration_images(folder, calib_images), subset_size=calib_images)
    export_openvino(det.model, det.info, xml, img_size=hw, check=False, int8=options)
    return xml


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> None
