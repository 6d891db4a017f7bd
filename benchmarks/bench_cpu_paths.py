"""CPU deployment paths side by side: torch fp32/bf16, ONNX Runtime, OpenVINO fp32/bf16/int8.

Part 1, latency: random-weight presets (latency does not depend on weight values) at
``--img-size``, batch 1, ``--threads`` threads; per path the model stage (network + in-graph
top-K) and end to end (preprocess + model + postprocess), median / p90 / min over
``--iters`` runs, next to the time the model's FLOPs would take at ``--peak-gflops``. The
paths of one size are measured interleaved (``--rounds`` rounds of ``--iters / --rounds``
runs each, round-robin), so that a change in machine load hits every path alike; the
figures are medians over all runs. OpenVINO int8 is the IR ``dfine export --format openvino
--int8`` writes, calibrated on synthetic images (latency only).

Part 2, accuracy (with ``--weights CKPT --data DATA``): COCO AP of each path on the dataset's
split, and how far each path's scores are from torch fp32 on the same images.

    python benchmarks/bench_cpu_paths.py --sizes n s --threads 2 --iters 30 --rounds 3
    python benchmarks/bench_cpu_paths.py --sizes --weights runs/train/exp/best.pth --data shapes/
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

PATHS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
         ("openvino", "bf16"), ("openvino", "int8")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", default=["n", "s"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size")
    parser.add_argument("--peak-gflops", type=float, default=0.0,
                        help="fp32 peak of this machine (GFLOP/s) for the 'at peak' column; "
                             "0: 2 FMA x 8 lanes x 2 FLOPs x cores x GHz estimated from /proc")
    parser.add_argument("--weights", help="trained checkpoint for the accuracy part")
    parser.add_argument("--data", help="dataset for the accuracy part")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()

    from dfine_cli.bench.flops import model_complexity
    from dfine_cli.bench.latency import (
        cpu_description,
        library_versions,
        load_bench_detector,
        measure_latency,
        synthetic_images,
    )
    from dfine_cli.models.presets import preset

    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    peak = args.peak_gflops or _estimated_peak(args.threads)
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items() if v)
    print(f"# {cpu['model']}, bf16 {cpu['bf16']}, {args.threads} threads, batch 1, "
          f"{args.img_size}x{args.img_size}, warmup {args.warmup}, iters {args.iters}; {versions}")
    print(f"# fp32 peak assumed: {peak:.0f} GFLOP/s; load average {os.getloadavg()[0]:.2f}")
    images = synthetic_images(4, 640, 480)
    print("size\tpath\tmodel median (of round medians)\tmodel p90 (worst round)\tmodel min\t"
          "e2e median\tGFLOPs\tms at peak")
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, Path] = {}
        for size in args.sizes:
            gflops = model_complexity(preset(size, num_classes=80),
                                      (args.img_size, args.img_size)).gflops
            detectors = {}
            for backend, precision in PATHS:
                try:
                    if precision == "int8":
                        xml = _int8_ir(size, args.img_size, Path(tmp))
                        loaded = load_bench_detector(xml, backend=backend, threads=args.threads,
                                                     work_dir=Path(tmp))
                    else:
                        loaded = load_bench_detector(size, backend=backend, precision=precision,
                                                     threads=args.threads, img_size=args.img_size,
                                                     work_dir=Path(tmp), onnx_cache=cache)
                except Exception as exc:  # a path this machine cannot run (bf16, nncf missing)
                    print(f"{size}\t{backend}:{precision}\tn/a ({str(exc).splitlines()[0][:80]})")
                    continue
                detectors[f"{backend}:{precision}"] = loaded.detector
            # per path and round: (model median, model p90, model min, end-to-end median)
            rounds: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in detectors}
            per_round = max(1, args.iters // max(1, args.rounds))
            for r in range(max(1, args.rounds)):
                for name, det in detectors.items():
                    stats = measure_latency(det, images, warmup=args.warmup if r == 0 else 1,
                                            iters=per_round)
                    m, e = stats["model"], stats["end_to_end"]
                    rounds[name].append((m.median_ms, m.p90_ms, m.min_ms, e.median_ms))
            for name in detectors:
                a = np.asarray(rounds[name])
                print(f"{size}\t{name}\t{np.median(a[:, 0]):.1f}\t{a[:, 1].max():.1f}\t"
                      f"{a[:, 2].min():.1f}\t{np.median(a[:, 3]):.1f}\t{gflops:.2f}\t"
                      f"{1000 * gflops / peak:.1f}", flush=True)
        if args.weights and args.data:
            _accuracy(args, Path(tmp), cache)


def _int8_ir(size: str, img_size: int, work_dir: Path) -> Path:
    """An INT8 IR of the random-weight preset, calibrated on 16 synthetic images."""
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.export.int8 import calibration_images
    from dfine_cli.export.openvino_ir import Int8Options, export_openvino

    calib = work_dir / "calib"
    if not calib.is_dir():
        make_synthetic_dataset(calib, num_images=20, num_classes=3, img_size=img_size)
    det = Detector.from_preset(size, num_classes=80, img_size=img_size)
    assert det.model is not None and det.info is not None
    xml = work_dir / f"{size}_{img_size}_int8.xml"
    export_openvino(det.model, det.info, xml, img_size=(img_size, img_size), check=False,
                    dynamic_batch=False, int8=Int8Options(calibration_images(calib, 16), 16))
    return xml


def _accuracy(args: argparse.Namespace, work_dir: Path, cache: dict[str, Path]) -> None:
    from dfine_cli.bench.accuracy import evaluate_predictions, open_split, predict_split
    from dfine_cli.bench.latency import load_bench_detector

    dataset = open_split(args.data, args.split)
    print(f"\n# accuracy on {args.data} ({args.split}, {len(dataset)} images), {args.weights}")
    print("path\tAP\tAP50\tdelta AP vs torch fp32\tmax |score diff| vs torch fp32 (top 100)")
    reference = None
    for backend, precision in PATHS:
        loaded = load_bench_detector(args.weights, backend=backend, precision=precision,
                                     threads=args.threads, work_dir=work_dir, onnx_cache=cache)
        predictions = predict_split(loaded.detector, dataset)
        result = evaluate_predictions(predictions, dataset)
        if reference is None:
            reference = (result.stats["AP"], predictions)
        diff = max(float(np.abs(p.scores[:100] - r.scores[:100]).max())
                   for p, r in zip(predictions, reference[1], strict=True))
        print(f"{backend}:{precision}\t{result.stats['AP']:.4f}\t{result.stats['AP50']:.4f}\t"
              f"{result.stats['AP'] - reference[0]:+.4f}\t{diff:.2e}", flush=True)


def _estimated_peak(threads: int) -> float:
    """fp32 FLOP/s at AVX-512/AVX2 FMA width: 2 FMA units x 8 fp32 lanes (256-bit datapath, as
    on AMD Zen 4) x 2 FLOPs x cores x clock."""
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("cpu MHz", "bogomips")):
                value = float(line.split(":")[1])
                mhz = max(mhz, value / 2 if line.startswith("bogomips") else value)
    except OSError:
        pass
    return 2 * 8 * 2 * threads * (mhz or 2500) / 1000


if __name__ == "__main__":
    main()
