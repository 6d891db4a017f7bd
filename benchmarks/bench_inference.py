"""CPU latency of the deploy module in torch and of the exported model in ONNX Runtime.

Median (and p90, min) of ``--iters`` runs after ``--warmup`` runs, batch 1, 640x640,
``--threads`` threads, random weights (latency does not depend on weight values).

    python benchmarks/bench_inference.py --sizes n s --threads 2 --iters 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch


def measure(fn: Callable[[], object], warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_ms": times[0],
    }


def run_torch(module: torch.nn.Module, images: torch.Tensor, sizes: torch.Tensor) -> object:
    with torch.inference_mode():
        return module(images, sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["n", "s"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    import onnxruntime as ort

    from dfine_cli import Detector
    from dfine_cli.export.onnx import export_onnx

    torch.set_num_threads(args.threads)
    hw = (args.img_size, args.img_size)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}, "
          f"batch 1, {hw[0]}x{hw[1]}, warmup {args.warmup}, iters {args.iters}")
    for size in args.sizes:
        det = Detector.from_preset(size, num_classes=80, img_size=hw)
        module = det.deploy_module(fuse=args.fuse)
        if args.fuse:
            module.use_channels_last()
        images = torch.rand(1, 3, *hw)
        sizes = torch.tensor([[hw[1], hw[0]]])

        t = measure(partial(run_torch, module, images, sizes), args.warmup, args.iters)
        print(f"{size}\ttorch{'(fused, channels-last)' if args.fuse else ''}\tmedian {t['median_ms']:.1f} ms"
              f"\tp90 {t['p90_ms']:.1f}\tmin {t['min_ms']:.1f}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{size}.onnx"
            assert det.model is not None and det.info is not None
            export_onnx(det.model, det.info, path, img_size=hw, check=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"images": images.numpy(), "orig_target_sizes": sizes.numpy().astype(np.int64)}
            o = measure(partial(session.run, None, feed), args.warmup, args.iters)
        print(f"{size}\tonnxruntime\tmedian {o['median_ms']:.1f} ms\tp90 {o['p90_ms']:.1f}"
              f"\tmin {o['min_ms']:.1f}", flush=True)


if __name__ == "__main__":
    main()
