"""OpenVINO INT8 (NNCF) next to FP32 and BF16: COCO AP and latency per ignored scope.

For a trained checkpoint and its dataset: the float32 IR is written once, then quantized
once per scope of :data:`dfine_cli.export.int8.IGNORED_SCOPES` (the parts left in floating
point), calibrated on ``--calib-images`` images of the dataset's ``train`` split. Every
path is scored with COCO AP on ``--split`` and timed at batch 1 with ``--threads`` threads
(model stage and end to end, median over ``--rounds`` interleaved rounds of
``--iters / --rounds`` runs, so that load from other processes hits every path alike).
The table says, per INT8 scope, whether it meets the goal: AP within ``--tolerance`` AP
(points, 0..100) of OpenVINO FP32 and a model stage faster than OpenVINO BF16. Where the
CPU runs bf16, each scope's IR is also run with its float parts in bf16 (``+bf16``, what
``dfine predict IR.xml --bf16`` runs).

    python benchmarks/bench_int8.py runs/demo/exp/train/best.pth --data runs/demo/exp/data
    python benchmarks/bench_int8.py best.pth --data shapes/ --scopes none heads --calib-images 96

``--work-dir`` keeps the IRs between runs (a scope's IR is reused when present).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    from dfine_cli.export.int8 import DEFAULT_SCOPE, IGNORED_SCOPES

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="trained checkpoint")
    parser.add_argument("--data", required=True, help="COCO-format dataset the model was trained on")
    parser.add_argument("--split", default="val", help="split to score (default: val)")
    parser.add_argument("--scopes", nargs="*", default=list(IGNORED_SCOPES),
                        choices=list(IGNORED_SCOPES), help=f"INT8 scopes (default: all; "
                        f"the library default is {DEFAULT_SCOPE})")
    parser.add_argument("--calib-images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1.5, help="AP points (0..100)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the torch fp32 row")
    parser.add_argument("--work-dir", type=Path, help="keep the IRs here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        _run(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
            _run(args, Path(tmp))


def _run(args: argparse.Namespace, work_dir: Path) -> None:
    from dfine_cli.bench.latency import cpu_description, library_versions, synthetic_images
    from dfine_cli.data.cocofile import resolve_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.engine.evaluate import evaluate, open_split
    from dfine_cli.export.int8 import calibration_images

    det = Detector.from_checkpoint(args.weights)
    size = det.img_size
    try:
        calib_dir = resolve_dataset(args.data, "train").images_dir
    except Exception:  # no train split: calibrate on the scored one (said below)
        calib_dir = resolve_dataset(args.data, args.split).images_dir
    calib = calibration_images(calib_dir, args.calib_images)
    dataset = open_split(args.data, args.split)
    cpu = cpu_description()
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items() if v)
    print(f"# {cpu['model']}, bf16 {cpu['bf16']}, {args.threads} threads, batch 1, "
          f"{size[0]}x{size[1]}; {versions}")
    print(f"# {args.weights}: scored on {args.split} ({len(dataset)} images), calibrated on "
          f"{len(calib)} images of {calib_dir}; load average at start "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    paths = _load_paths(args, det, calib, work_dir)
    images = synthetic_images(4, 640, 480)
    accuracy: dict[str, tuple[float, float]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    for name, (detector, _) in paths.items():
        run = evaluate(detector, dataset, batch_size=1)
        accuracy[name] = (100 * float(run.result.stats["AP"]),
                          100 * float(run.result.stats["AP50"]))
        scores[name] = [np.sort(p.scores)[::-1][:100] for p in run.predictions]
    model_ms, e2e_ms = _interleaved_latency(paths, images, args)

    reference_ap = accuracy["openvino:fp32"][0]
    bf16 = model_ms.get("openvino:bf16")
    print("path\tscope (kept float)\tquantization points\tAP\tAP50\tdelta AP vs ov fp32\t"
          "score diff vs ov fp32\tmodel median ms\te2e median ms\tvs ov bf16\tgoal met")
    for name, (_, extra) in paths.items():
        ap, ap50 = accuracy[name]
        # mean over images of the mean |difference| of the sorted top-100 scores: how far
        # quantization moves the confidences, independent of how detections are ordered
        diff = float(np.mean([np.abs(a - b).mean() for a, b in
                              zip(scores[name], scores["openvino:fp32"], strict=True)]))
        ratio = f"{model_ms[name] / bf16:.2f}x" if bf16 else "-"
        goal = "-"
        if name.startswith("openvino:int8"):
            within = reference_ap - ap <= args.tolerance
            faster = bf16 is None or model_ms[name] < bf16
            goal = "yes" if within and faster else (
                "no (accuracy)" if not within else "no (slower than bf16)")
        print(f"{name}\t{extra.get('scope', '-')}\t{extra.get('quantization_points', '-')}\t"
              f"{ap:.2f}\t{ap50:.2f}\t{ap - reference_ap:+.2f}\t{diff:.4f}\t{model_ms[name]:.1f}\t"
              f"{e2e_ms[name]:.1f}\t{ratio}\t{goal}", flush=True)
    print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}; AP in "
          f"points (0..100), tolerance {args.tolerance} AP")


def _load_paths(args: argparse.Namespace, det: Any, calib: list[Path],
                work_dir: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Name -> (Detector, details) for torch fp32, OpenVINO fp32/bf16 and each INT8 scope."""
    import openvino as ov

    from dfine_cli.backends.openvino_backend import OpenVINOBackend
    from dfine_cli.detector import Detector
    from dfine_cli.export.int8 import quantize_openvino
    from dfine_cli.export.openvino_ir import export_openvino

    size = det.img_size
    fp32_xml = work_dir / f"{Path(args.weights).stem}_fp32.xml"
    if not fp32_xml.is_file():
        export_openvino(det.model, det.info, fp32_xml, img_size=size, dynamic_batch=False,
                        check=False)
    paths: dict[str, tuple[Any, dict[str, Any]]] = {}
    if not args.no_torch:
        paths["torch:fp32"] = (det, {})
    paths["openvino:fp32"] = (Detector(OpenVINOBackend(fp32_xml, threads=args.threads)), {})
    try:
        paths["openvino:bf16"] = (
            Detector(OpenVINOBackend(fp32_xml, threads=args.threads, precision="bf16")), {})
    except Exception as exc:  # this CPU has no bf16
        print(f"# openvino:bf16 n/a: {str(exc).splitlines()[0][:100]}")
    for scope in args.scopes:
        xml = work_dir / f"{Path(args.weights).stem}_int8_{scope}_{len(calib)}.xml"
        summary: dict[str, Any] = {"scope": scope}
        if xml.is_file():
            model = ov.Core().read_model(str(xml))
            summary["quantization_points"] = sum(
                op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
        else:
            start = time.perf_counter()
            quantized, summary = quantize_openvino(fp32_xml, calib, size,
                                                   subset_size=len(calib), scope=scope)
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
            print(f"# quantized scope {scope}: {summary['quantization_points']} points in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        paths[f"openvino:int8:{scope}"] = (Detector(OpenVINOBackend(xml, threads=args.threads)),
                                           summary)
        if "openvino:bf16" in paths:  # the same IR, its float parts in bf16 (predict --bf16)
            paths[f"openvino:int8:{scope}+bf16"] = (
                Detector(OpenVINOBackend(xml, threads=args.threads, precision="bf16")),
                {**summary, "scope": f"{scope}, rest bf16"})
    return paths


def _interleaved_latency(paths: dict[str, tuple[Any, dict[str, Any]]], images: list[np.ndarray],
                         args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Median model-stage and end-to-end ms per path over round-robin rounds."""
    from dfine_cli.bench.latency import measure_latency

    per_round = max(1, args.iters // max(1, args.rounds))
    model: dict[str, list[float]] = {name: [] for name in paths}
    e2e: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(max(1, args.rounds)):
        for name, (detector, _) in paths.items():
            stats = measure_latency(detector, images, warmup=args.warmup if r == 0 else 1,
                                    iters=per_round)
            model[name].append(stats["model"].median_ms)
            e2e[name].append(stats["end_to_end"].median_ms)
    return ({k: statistics.median(v) for k, v in model.items()},
            {k: statistics.median(v) for k, v in e2e.items()})


if __name__ == "__main__":
    main()
