"""CPU deployment paths side by side: torch fp32/bf16 (eager and ``--compile``d), ONNX Runtime,
OpenVINO fp32/bf16/int8 (and int8 with its float parts in bf16).

Part 1, latency: random-weight presets (latency does not depend on weight values) at
``--img-size``, batch 1, ``--threads`` threads; per path the model stage (network + in-graph
top-K) and end to end (preprocess + model + postprocess), median / p90 / min over
``--iters`` runs, next to the time the model's FLOPs would take at ``--peak-gflops``. The
paths of one size are measured interleaved (``--rounds`` rounds of ``--iters / --rounds``
runs each, round-robin), so that a change in machine load hits every path alike; the
figures are medians over all runs. OpenVINO int8 is the IR ``dfine export --format openvino
--int8`` writes, calibrated on synthetic images (latency only); int8+bf16 runs that IR as
``dfine predict IR.xml --bf16`` does, its float parts in bf16.

With ``--official DIR`` (a checkout of the official D-FINE repository, used read-only and
only by this script), the official deploy model (``model.deploy()`` + ``postprocessor.deploy()``
on the same keyed weights, built from its COCO config) is measured in the same rounds, and
every path is also given as a fraction of its median model-stage time ("x official"). Every
path runs with malloc as the ``dfine`` commands set it (``dfine_cli.allocator``;
``DFINE_MALLOC=default`` for glibc's own), the official model included. With
``--keyed``, or whenever ``--official`` is given, every path runs the reference's keyed
weights of each size (``../shared/reference``) instead of random ones.

Part 2, accuracy (with ``--weights CKPT --data DATA``): COCO AP of each path on the dataset's
split, and how far each path's scores are from torch fp32 on the same images.

    python benchmarks/bench_cpu_paths.py --sizes n s --threads 2 --iters 30 --rounds 3
    python benchmarks/bench_cpu_paths.py --sizes n s --official ~/src/D-FINE --paths torch:fp32 openvino:int8
    python benchmarks/bench_cpu_paths.py --sizes --weights runs/train/exp/best.pth --data shapes/
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: ``openvino:int8+bf16`` is the INT8 IR with its float parts (the parts the INT8 scope keeps
#: float, and the operations NNCF does not quantize) in bf16: ``dfine predict IR.xml --bf16``.
#: ``torch:*+compile`` is ``dfine predict --compile`` (weights frozen into the compiled graph);
#: it compiles during its first warm-up run (30-60 s per path on 2 cores).
PATHS = [("torch", "fp32"), ("torch", "bf16"), ("torch", "fp32+compile"),
         ("torch", "bf16+compile"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
         ("openvino", "bf16"), ("openvino", "int8"), ("openvino", "int8+bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, warmup=5, iters=30)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size")
    parser.add_argument("--peak-gflops", type=float, default=0.0,
                        help="fp32 peak of this machine (GFLOP/s) for the 'at peak' column; "
                             "0: measured (a oneDNN 3x3 convolution, see measured_peaks)")
    parser.add_argument("--weights", help="trained checkpoint for the accuracy part")
    parser.add_argument("--data", help="dataset for the accuracy part")
    parser.add_argument("--split", default="val")
    parser.add_argument("--paths", nargs="*", default=[f"{b}:{p}" for b, p in PATHS],
                        choices=[f"{b}:{p}" for b, p in PATHS], help="paths to measure (default: all)")
    parser.add_argument("--official", type=Path,
                        help="checkout of the official D-FINE repository: adds its deploy model")
    args = parser.parse_args()
    paths = [tuple(name.split(":")) for name in args.paths]
    keyed = args.keyed or args.official is not None
    check_keyed_reference(parser, args, keyed)
    if args.official is not None and not (args.official / "src" / "core").is_dir():
        parser.error(f"--official {args.official}: not a checkout of the official D-FINE "
                     "repository (no src/core)")
    if args.weights and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: no such file")
    if args.data and not Path(args.data).exists():
        parser.error(f"--data {args.data}: no such dataset")
    if args.official is not None and len(args.sizes) > 1:
        # the official package keeps its configuration in module globals: one size per process
        import subprocess
        import sys

        for size in args.sizes:
            argv = list(sys.argv[1:])
            if "--sizes" not in argv:
                argv.append("--sizes")
            start = argv.index("--sizes")
            end = next((i for i in range(start + 1, len(argv)) if argv[i].startswith("--")),
                       len(argv))
            subprocess.run([sys.executable, __file__, *argv[:start], "--sizes", size,
                            *argv[end:]], check=True)
        return

    from dfine_cli.allocator import keep_freed_memory
    from dfine_cli.bench.flops import model_complexity
    from dfine_cli.bench.latency import (
        cpu_description,
        library_versions,
        measure_latency,
        synthetic_images,
    )
    from dfine_cli.models.presets import preset

    malloc = keep_freed_memory()  # as the dfine commands run (DFINE_MALLOC=default: glibc's own)
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    peak = args.peak_gflops or measured_peaks(args.threads)["conv fp32"]
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items() if v)
    print(f"# {cpu['model']}, bf16 {cpu['bf16']}, {args.threads} threads, batch 1, "
          f"{args.img_size}x{args.img_size}, warmup {args.warmup}, iters {args.iters}; {versions}")
    print(f"# fp32 peak {'given' if args.peak_gflops else 'measured'}: {peak:.0f} GFLOP/s; weights: "
          f"{'keyed (reference)' if keyed else 'random'}; load average at start "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; malloc {malloc} (every path)")
    images = synthetic_images(4, 640, 480)
    print("size\tpath\tmodel median (of round medians)\tmodel p90 (worst round)\tmodel min\t"
          "e2e median\tGFLOPs\tms at peak\tx official")
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, Path] = {}
        for size in args.sizes:
            gflops = model_complexity(preset(size, num_classes=80),
                                      (args.img_size, args.img_size)).gflops
            detectors: dict[str, Any] = {}
            weights = _keyed_checkpoint(args.reference, size, Path(tmp)) if keyed else size
            if args.official is not None and args.img_size != 640:
                print(f"{size}\tofficial:fp32\tn/a (its deploy model and the keyed anchors "
                      "are built for 640x640)")
            elif args.official is not None:
                detectors["official:fp32"] = _official_detector(args.official, size, weights,
                                                                args.img_size)
            for backend, precision in paths:
                try:
                    detectors[f"{backend}:{precision}"] = load_path(
                        weights, f"{backend}:{precision}", args, Path(tmp), cache)
                except Exception as exc:  # a path this machine cannot run (bf16, nncf missing)
                    print(f"{size}\t{backend}:{precision}\tn/a ({str(exc).splitlines()[0][:80]})")
            # per path and round: (model median, model p90, model min, end-to-end median)
            rounds: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in detectors}
            per_round = max(1, args.iters // max(1, args.rounds))
            for r in range(max(1, args.rounds)):
                for name, det in detectors.items():
                    stats = measure_latency(det, images, warmup=args.warmup if r == 0 else 1,
                                            iters=per_round)
                    m, e = stats["model"], stats["end_to_end"]
                    rounds[name].append((m.median_ms, m.p90_ms, m.min_ms, e.median_ms))
            official = (float(np.median(np.asarray(rounds["official:fp32"])[:, 0]))
                        if "official:fp32" in rounds else None)
            for name in detectors:
                a = np.asarray(rounds[name])
                ratio = f"{np.median(a[:, 0]) / official:.2f}" if official else "-"
                print(f"{size}\t{name}\t{np.median(a[:, 0]):.1f}\t{a[:, 1].max():.1f}\t"
                      f"{a[:, 2].min():.1f}\t{np.median(a[:, 3]):.1f}\t{gflops:.2f}\t"
                      f"{1000 * gflops / peak:.1f}\t{ratio}", flush=True)
        print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if args.weights and args.data:
            _accuracy(args, Path(tmp), cache)


def add_shared_arguments(parser: argparse.ArgumentParser, *, warmup: int, iters: int) -> None:
    """The options every CPU-path benchmark takes: what to build, how to time it, which weights."""
    parser.add_argument("--sizes", nargs="*", default=["n", "s"], choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--keyed", action="store_true",
                        help="the reference's keyed weights instead of random ones")
    parser.add_argument("--reference", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared" / "reference",
                        help="folder of the reference fixtures (keyed-weight manifests)")
    parser.add_argument("--calib-images", type=int, default=16,
                        help="synthetic images calibrating the openvino:int8 paths")


def check_keyed_reference(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          keyed: bool) -> None:
    """Stop with one usage line when keyed weights are asked for and ``--reference`` lacks a
    size's fixtures (the manifest and the verbatim tensors the weights are built from)."""
    if not keyed:
        return
    for size in args.sizes:
        for name in (f"official_keys_{size}.tsv", f"official_verbatim_{size}.pt"):
            if not (args.reference / name).is_file():
                parser.error(f"keyed weights need {args.reference / name} (see --reference)")


def load_path(weights: str, path: str, args: argparse.Namespace, work_dir: Path,
              onnx_cache: dict[str, Path]) -> Any:
    """The detector of one path (``backend:precision``) for ``weights`` (a preset or a
    checkpoint). ``int8`` paths run an INT8 IR of the weights (``int8+bf16``: its float parts
    in bf16); the other OpenVINO/ONNX Runtime paths share one ONNX export per size."""
    from dfine_cli.bench.latency import load_bench_detector

    backend, precision = path.split(":")
    if precision.startswith("int8"):
        xml = _int8_ir(weights, args.img_size, work_dir, args.calib_images)
        return load_bench_detector(xml, backend=backend, threads=args.threads, work_dir=work_dir,
                                   precision="bf16" if precision == "int8+bf16" else "fp32").detector
    return load_bench_detector(weights, backend=backend, **_precision_options(precision),
                               threads=args.threads, img_size=args.img_size, work_dir=work_dir,
                               onnx_cache=onnx_cache).detector


def _precision_options(precision: str) -> dict[str, Any]:
    """A path's precision as ``load_bench_detector`` takes it: ``bf16+compile`` -> bf16, compiled."""
    return {"precision": precision.removesuffix("+compile"),
            "compile": precision.endswith("+compile")}


def _int8_ir(weights: str, img_size: int, work_dir: Path, calib_images: int) -> Path:
    """An INT8 IR (default scope) of a preset or checkpoint, calibrated on synthetic images."""
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.export.int8 import calibration_images
    from dfine_cli.export.openvino_ir import Int8Options, export_openvino

    calib = work_dir / "calib"
    if not calib.is_dir():
        make_synthetic_dataset(calib, num_images=max(20, calib_images + 4), num_classes=3,
                               img_size=img_size)
    if Path(weights).is_file():
        det = Detector.from_checkpoint(weights)
    else:
        det = Detector.from_preset(weights, num_classes=80, img_size=img_size)
    assert det.model is not None and det.info is not None
    xml = work_dir / f"{Path(weights).stem}_{img_size}_int8.xml"
    if xml.is_file():  # int8 and int8+bf16 run the same IR
        return xml
    export_openvino(det.model, det.info, xml, img_size=(img_size, img_size), check=False,
                    dynamic_batch=False,
                    int8=Int8Options(calibration_images(calib, calib_images), calib_images))
    return xml


def _keyed_checkpoint(reference: Path, size: str, work_dir: Path) -> str:
    """The reference's keyed weights of ``size`` in the official checkpoint layout."""
    import sys

    if size == "n" and (reference / "dfine_n_keyed1234.pth").is_file():
        return str(reference / "dfine_n_keyed1234.pth")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' weight builder
    from tests.models.reference_weights import keyed_state_dict

    path = work_dir / f"dfine_{size}_keyed1234.pth"
    if not path.is_file():
        torch.save({"model": keyed_state_dict(reference, size)}, path)
    return str(path)


def _official_detector(repo: Path, size: str, weights: str, img_size: int) -> object:
    """The official deploy model of ``size`` (its COCO config, ``weights`` loaded strictly),
    wrapped as a torch backend so that it is timed exactly like ours."""
    from official_repo import official_package

    from dfine_cli.backends.base import BackendMeta
    from dfine_cli.backends.torch_backend import TorchBackend
    from dfine_cli.checkpoints import ModelInfo
    from dfine_cli.detector import Detector

    cfg = official_package(repo).core.YAMLConfig(str(repo / "configs" / "dfine" / f"dfine_hgnetv2_{size}_coco.yml"),
                     HGNetv2={"pretrained": False})
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    cfg.model.load_state_dict(state)

    class OfficialDeploy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = cfg.model.deploy()
            self.postprocessor = cfg.postprocessor.deploy()

        def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> object:
            return self.postprocessor(self.model(images), sizes)

    names, ids = ModelInfo.default_names(80)
    meta = BackendMeta(img_size=(img_size, img_size), class_names=names, category_ids=ids,
                       dynamic_batch=True, description="official deploy model")
    return Detector(TorchBackend(OfficialDeploy().eval(), meta, torch.device("cpu")))  # type: ignore[arg-type]


def _accuracy(args: argparse.Namespace, work_dir: Path, cache: dict[str, Path]) -> None:
    from dfine_cli.bench.latency import load_bench_detector
    from dfine_cli.engine.evaluate import evaluate, open_split

    dataset = open_split(args.data, args.split)
    print(f"\n# accuracy on {args.data} ({args.split}, {len(dataset)} images), {args.weights}")
    print("path\tAP\tAP50\tdelta AP vs torch fp32\tmax |score diff| vs torch fp32 (top 100)")
    reference = None
    for backend, precision in PATHS:
        if precision.startswith("int8"):  # an IR of its own: see bench_int8.py
            continue
        loaded = load_bench_detector(args.weights, backend=backend,
                                     **_precision_options(precision),
                                     threads=args.threads, work_dir=work_dir, onnx_cache=cache)
        run = evaluate(loaded.detector, dataset, batch_size=1)
        result, predictions = run.result, run.predictions
        if reference is None:
            reference = (result.stats["AP"], predictions)
        diff = max(float(np.abs(p.scores[:100] - r.scores[:100]).max())
                   for p, r in zip(predictions, reference[1], strict=True))
        print(f"{backend}:{precision}\t{result.stats['AP']:.4f}\t{result.stats['AP50']:.4f}\t"
              f"{result.stats['AP'] - reference[0]:+.4f}\t{diff:.2e}", flush=True)


def measured_peaks(threads: int, bf16: bool = False) -> dict[str, float]:
    """This machine's attainable GFLOP/s with ``threads`` threads: a oneDNN 3x3 convolution
    (channels-last, 256 -> 256 channels at 80x80, the kind of convolution the detectors spend
    most of their time in) and a 2048-square matrix product; best of 8 runs each, fp32 and,
    with ``bf16``, bf16. Measured rather than worked out from the clock, which on a turbo
    clock or a VM is not what the cores run at."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    peaks: dict[str, float] = {}
    try:
        for dtype, name in [(torch.float32, "fp32")] + ([(torch.bfloat16, "bf16")] if bf16 else []):
            x = torch.randn(1, 256, 80, 80, dtype=dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(256, 256, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
            peaks[f"conv {name}"] = _best_rate(torch.nn.functional.conv2d, (x, w, None, 1, 1),
                                               2 * 256 * 256 * 9 * 80 * 80)
            a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
            peaks[f"matmul {name}"] = _best_rate(torch.mm, (a, b), 2 * 2048 ** 3)
    finally:
        torch.set_num_threads(previous)
    return peaks


def _best_rate(op: Any, args: tuple[Any, ...], flops: int, runs: int = 8) -> float:
    """GFLOP/s of the fastest of ``runs`` calls of ``op(*args)`` (after one untimed call)."""
    with torch.inference_mode():
        op(*args)
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            op(*args)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def run_script(main: Any) -> int:
    """Run a benchmark's ``main``: a cause ``dfine`` names (a bad dataset or checkpoint...)
    ends as one line on stderr and that error's exit code, as the ``dfine`` commands end."""
    import sys

    from dfine_cli.errors import DfineError

    try:
        return int(main() or 0)
    except DfineError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(run_script(main))
