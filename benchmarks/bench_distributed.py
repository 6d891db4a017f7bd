"""Training throughput (images/s) with 1 vs N processes on this machine (CPU, gloo).

Trains D-FINE-N for one epoch on a synthetic dataset with each process count and reads the
epoch's training time from the run's metrics.json (evaluation excluded).

    python benchmarks/bench_distributed.py --procs 1 2 --images 64 --img-size 320 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from dfine_cli.data.synth import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        summary = make_synthetic_dataset(data, num_images=args.images, num_classes=3, seed=0,
                                         img_size=args.img_size)
        for procs in args.procs:
            out = Path(tmp) / f"run{procs}"
            cmd = [sys.executable, "-m", "dfine_cli", "train", "--data", str(data), "--epochs", "1",
                   "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
                   "--workers", "0", "--device", "cpu", "--output", str(out),
                   "--nproc-per-node", str(procs)]
            subprocess.run(cmd, check=True, capture_output=True)
            epoch = json.loads((out / "metrics.json").read_text())["epochs"][0]
            rate = summary.train_images / epoch["time_s"]
            print(f"{procs} process(es): {summary.train_images} images in {epoch['time_s']:.1f} s "
                  f"-> {rate:.2f} images/s (batch {args.batch_size} total, {args.img_size}px)", flush=True)


if __name__ == "__main__":
    main()
