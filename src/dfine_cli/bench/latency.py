"""Latency of the whole detection path, stage by stage, on any backend and precision.

One iteration of a measurement is what :meth:`~dfine_cli.detector.Detector.predict` does for
one batch of already decoded images:

- ``preprocess``: resize + scale to float (:func:`~dfine_cli.detector.preprocess`);
- ``model``: the backend call, i.e. the network *and* the in-graph top-K postprocessor (an
  exported model holds both, so the split is the same on every backend);
- ``postprocess``: threshold, clip, class names -> :class:`~dfine_cli.detector.Detections`;
- ``end_to_end``: the three together, timed as one span.

Times are wall-clock milliseconds per batch; every figure comes with the setup that
produced it (:class:`BenchSetup`) so it can be reproduced.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfine_cli import __version__
from dfine_cli.backends import check_precision
from dfine_cli.detector import Detector, preprocess
from dfine_cli.detector_options import DEFAULT_CONF, check_compile_options
from dfine_cli.devices import cpu_flags, cpu_supports_bf16
from dfine_cli.errors import UsageError
from dfine_cli.image_size import DEFAULT_IMG_SIZE, check_img_size
from dfine_cli.models.presets import SIZES

log = logging.getLogger("dfine.bench.latency")

PRESET_NAMES = SIZES
STAGES = ("preprocess", "model", "postprocess", "end_to_end")

# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    """Summary of timing samples, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    samples: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Stats:
        """Median, 90th percentile (nearest rank), minimum and mean of ``samples_ms``."""
        if not samples_ms:
            raise ValueError("no timing samples")
        ordered = sorted(float(s) for s in samples_ms)
        rank = max(0, int(np.ceil(0.9 * len(ordered))) - 1)
        return cls(
            median_ms=statistics.median(ordered),
            p90_ms=ordered[rank],
            min_ms=ordered[0],
            mean_ms=statistics.fmean(ordered),
            samples=len(ordered),
        )

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- environment


def cpu_description() -> dict[str, Any]:
    """CPU model, logical cores and bf16 support of this machine (Linux details when available)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    flags = cpu_flags(text)
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "bf16": cpu_supports_bf16(flags),
        "amx": "amx_tile" in flags,
        "avx512": "avx512f" in flags,
    }


def library_versions() -> dict[str, str | None]:
    """Versions of everything that can change a figure (``None``: not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {
        "dfine": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for dist in ("onnxruntime", "openvino", "tensorrt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# --------------------------------------------------------------------------- loading


def is_preset_name(weights: str | Path) -> bool:
    """``n``..``x`` that is not an existing file: a randomly initialised model of that size."""
    return str(weights).lower() in PRESET_NAMES and not Path(weights).exists()


@dataclass
class LoadedBench:
    detector: Detector
    backend: str
    precision: str
    weights: str
    onnx_path: Path | None = None  # the ONNX an onnxruntime/openvino run used


def check_engine_file(backend: str, weights: str | Path) -> None:
    """``tensorrt`` measures built engines only: a usage error, raised before any device check."""
    if backend == "tensorrt" and Path(str(weights)).suffix.lower() not in (".engine", ".trt", ".plan"):
        raise UsageError("--backend tensorrt measures a built engine (.engine); build one "
                         "with 'dfine export WEIGHTS --format engine'")


def load_bench_detector(
    weights: str | Path,
    *,
    backend: str,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    img_size: int | None = None,
    work_dir: Path,
    onnx_cache: dict[str, Path] | None = None,
    compile: bool = False,
) -> LoadedBench:
    """A :class:`Detector` ready to measure ``weights`` on ``backend`` at ``precision``.

    ``weights`` may be a preset name (random weights: latency does not depend on values), a
    checkpoint, an ``.onnx`` (onnxruntime/openvino) or an ``.engine`` (tensorrt). A checkpoint
    or preset measured with onnxruntime/openvino is exported to ONNX in ``work_dir`` first
    (once per weights and input size when ``onnx_cache`` is shared). ``compile`` runs a torch
    model through :meth:`Detector.compile_model` (compiled at its first call).
    """
    check_precision(backend, precision, device)
    if compile:
        check_compile_options(backend, device)
    name = str(weights)
    suffix = Path(name).suffix.lower()
    size = check_img_size(img_size) if img_size else None
    check_engine_file(backend, name)
    if backend == "tensorrt":
        if size is not None:
            raise UsageError("an engine has a fixed input size; --img-size does not apply")
        if precision != "fp32":
            raise UsageError("an engine's precision is fixed when it is built "
                             "(dfine export --format engine [--fp16]); drop --fp16/--bf16")
        from dfine_cli.backends.tensorrt_backend import TensorRTBackend

        engine = TensorRTBackend(Path(name), device=device)
        return LoadedBench(Detector(engine), backend, engine.info.precision, name)
    if suffix == ".xml":  # OpenVINO IR
        if backend != "openvino":
            raise UsageError(f"{Path(name).name} is an OpenVINO IR: use --backend openvino")
        return LoadedBench(_onnx_detector(Path(name), backend, precision, device, threads, size),
                           backend, precision, name, Path(name))
    if suffix == ".onnx":
        if backend == "torch":
            raise UsageError(f"{Path(name).name} is ONNX: use --backend onnxruntime or openvino")
        return LoadedBench(_onnx_detector(Path(name), backend, precision, device, threads, size),
                           backend, precision, name, Path(name))
    if suffix in (".engine", ".trt", ".plan"):
        raise UsageError(f"{Path(name).name} is a TensorRT engine: use --backend tensorrt")
    if is_preset_name(name):
        det = Detector.from_preset(name.lower(), num_classes=80, img_size=size or DEFAULT_IMG_SIZE,
                                   device=device if backend == "torch" else "cpu")
    else:
        det = Detector.from_checkpoint(name, device=device if backend == "torch" else "cpu")
        if size is not None:
            det.backend.meta.img_size = size
    if backend == "torch":
        det.set_precision(precision)
        if compile:
            det.compile_model()
        return LoadedBench(det, backend, precision, name)
    key = f"{name}@{det.img_size[0]}x{det.img_size[1]}"
    cache = onnx_cache if onnx_cache is not None else {}
    if key not in cache:
        from dfine_cli.export.onnx import export_onnx

        assert det.model is not None and det.info is not None
        path = work_dir / f"{Path(name).stem}_{det.img_size[0]}x{det.img_size[1]}.onnx"
        log.info("exporting %s to ONNX for %s (%dx%d)", name, backend, *det.img_size)
        export_onnx(det.model, det.info, path, img_size=det.img_size, check=False)
        cache[key] = path
    onnx_path = cache[key]
    return LoadedBench(_onnx_detector(onnx_path, backend, precision, device, threads, None),
                       backend, precision, name, onnx_path)


def _onnx_detector(path: Path, backend: str, precision: str, device: str, threads: int | None,
                   size: tuple[int, int] | None) -> Detector:
    if backend == "openvino":
        from dfine_cli.backends.openvino_backend import OpenVINOBackend

        det = Detector(OpenVINOBackend(path, threads=threads, precision=precision, device=device))
    else:
        det = Detector.load(path, backend="onnxruntime", device=device, threads=threads)
    if size is not None and tuple(det.img_size) != size:
        raise UsageError(f"{path.name} has a fixed input size {det.img_size}; re-export it "
                         "for another --img-size")
    return det


# --------------------------------------------------------------------------- measuring


@dataclass
class BenchSetup:
    """Everything needed to reproduce a latency figure."""

    weights: str
    backend: str
    backend_description: str
    precision: str
    device: str
    threads: int
    batch_size: int
    img_size: tuple[int, int]  # network input (h, w)
    source_size: tuple[int, int]  # images fed in (w, h)
    warmup: int
    iters: int
    compiled: bool = False  # torch.compile (--compile)
    versions: dict[str, str | None] = field(default_factory=library_versions)
    cpu: dict[str, Any] = field(default_factory=cpu_description)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["img_size"] = list(self.img_size)
        data["source_size"] = list(self.source_size)
        return data


@dataclass
class LatencyResult:
    setup: BenchSetup
    stages: dict[str, Stats]

    @property
    def throughput(self) -> float:
        """Images per second at the median end-to-end time."""
        return 1000.0 * self.setup.batch_size / self.stages["end_to_end"].median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": self.setup.to_dict(),
            "stages": {name: stats.to_dict() for name, stats in self.stages.items()},
            "throughput_images_per_s": round(self.throughput, 3),
        }

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Table rows: stage, median, p90, min, mean (ms)."""
        return [
            (name, f"{s.median_ms:.2f}", f"{s.p90_ms:.2f}", f"{s.min_ms:.2f}", f"{s.mean_ms:.2f}")
            for name, s in self.stages.items()
        ]


def synthetic_images(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic RGB uint8 ``HxWx3`` images (content does not change latency)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def measure_latency(
    detector: Detector,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    iters: int = 50,
    conf: float = DEFAULT_CONF,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Stats]:
    """Time ``iters`` batches after ``warmup`` untimed ones; per-stage :class:`Stats`.

    Batches cycle through ``images``. ``clock`` returns seconds (injectable for tests).
    """
    if not images:
        raise UsageError("no images to measure with")
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise UsageError("--batch-size and --iters must be >= 1 and --warmup >= 0")
    samples: dict[str, list[float]] = {name: [] for name in STAGES}
    for step in range(warmup + iters):
        start = (step * batch_size) % len(images)
        batch = [images[(start + i) % len(images)] for i in range(batch_size)]
        t0 = clock()
        sizes = np.array([[im.shape[1], im.shape[0]] for im in batch], dtype=np.int64)
        tensor = preprocess(batch, detector.img_size)
        t1 = clock()
        labels, boxes, scores = detector.backend(tensor, sizes)
        t2 = clock()
        for i, image in enumerate(batch):
            # the same conversion Detector.predict applies to every image
            detector._to_detections(labels[i], boxes[i], scores[i], image, None, conf)
        t3 = clock()
        if step >= warmup:
            for name, value in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                samples[name].append(value * 1000.0)
    return {name: Stats.from_samples(values) for name, values in samples.items()}


def run_latency(
    weights: str | Path,
    *,
    backend: str = "torch",
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 1,
    img_size: int | None = None,
    source_size: tuple[int, int] = (640, 480),
    warmup: int = 10,
    iters: int = 50,
    work_dir: Path,
    compile: bool = False,
) -> LatencyResult:
    """Load ``weights`` for ``backend`` and measure it (see :func:`measure_latency`).

    ``backend="auto"`` picks it by the file's extension as every command does (a preset or
    checkpoint: torch); ``device="auto"`` is the backend's own choice
    (:func:`~dfine_cli.devices.resolve_backend_device`). ``compile`` (torch only) compiles
    the model in the first warm-up iteration, which it therefore always has.
    """
    from dfine_cli.backends import backend_for_file
    from dfine_cli.devices import resolve_backend_device

    if backend == "auto":
        backend = backend_for_file(Path(str(weights)), None)
    check_engine_file(backend, weights)
    device = str(resolve_backend_device(backend, device))
    if threads:
        torch.set_num_threads(threads)
    loaded = load_bench_detector(weights, backend=backend, precision=precision, device=device,
                                 threads=threads, img_size=img_size, work_dir=work_dir,
                                 compile=compile)
    if compile:
        warmup = max(warmup, 1)
    images = synthetic_images(max(batch_size, 4), *source_size)
    stages = measure_latency(loaded.detector, images, batch_size=batch_size, warmup=warmup,
                             iters=iters)
    setup = BenchSetup(
        weights=str(weights), backend=backend,
        backend_description=loaded.detector.backend.meta.description, precision=loaded.precision,
        device=device, threads=threads or torch.get_num_threads(), batch_size=batch_size,
        img_size=tuple(loaded.detector.img_size), source_size=source_size, warmup=warmup,  # type: ignore[arg-type]
        iters=iters, compiled=compile,
    )
    return LatencyResult(setup, stages)
