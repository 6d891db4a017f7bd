"""Page faults, system time and latency with glibc's malloc as it comes and as dfine sets it.

``dfine_cli.allocator.keep_freed_memory`` (what every ``dfine`` command calls at start) keeps
freed blocks up to 32 MiB in the heap. This script runs fresh processes alternately with the
setting (A) and without it (B, ``DFINE_MALLOC=default``), so that machine load hits both
alike, and prints per process and as medians: minor page faults, system CPU time and wall
time per forward of the fused channels-last deploy module (batch 1, ``--img-size``, random
weights), or per training step with ``--train-step`` (the step of ``bench_train_step.py``:
batch 4, denoising, AdamW, EMA), and the peak RSS.

    python benchmarks/bench_allocator.py --sizes n s --rounds 5
    python benchmarks/bench_allocator.py --sizes n --train-step --rounds 3 --iters 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _child(args: argparse.Namespace) -> None:
    import torch

    from dfine_cli.allocator import keep_freed_memory

    state = keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.train_step:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_train_step import _make_step

        step_args = argparse.Namespace(size=args.size, recipe="dfine", batch=4,
                                       img_size=args.img_size, threads=args.threads,
                                       compile=False, profile=False, contiguous=False)
        step, _ = _make_step(step_args)
        run = step
    else:
        from dfine_cli.models.build import build_model
        from dfine_cli.models.dfine import DeployModel

        module = DeployModel(build_model(args.size).eval().fuse()).use_channels_last()
        images = torch.rand(1, 3, args.img_size, args.img_size)
        sizes = torch.tensor([[args.img_size, args.img_size]])

        def run() -> None:
            with torch.inference_mode():
                module(images, sizes)

    for _ in range(args.warmup):
        run()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "malloc": state,
        "faults": (after.ru_minflt - before.ru_minflt) / args.iters,
        "sys_ms": (after.ru_stime - before.ru_stime) / args.iters * 1e3,
        "ms": statistics.median(times) * 1e3,
        "peak_rss_gib": after.ru_maxrss / 2**20,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["n", "s"], choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="A/B process pairs per size")
    parser.add_argument("--train-step", action="store_true", help="a training step, not a forward")
    parser.add_argument("--child", metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from dfine_cli.image_size import IMG_SIZE_RULE, is_valid_side

    if not is_valid_side(args.img_size):
        parser.error(f"--img-size must be {IMG_SIZE_RULE}, got {args.img_size}")
    if args.child:
        args.size = args.child
        _child(args)
        return 0

    unit = "step" if args.train_step else "forward"
    print(f"# per {unit}, {args.threads} threads, {args.img_size} px, {args.iters} iterations "
          f"per process; A: malloc as dfine sets it, B: DFINE_MALLOC=default", file=sys.stderr)
    print("size\trun\tround\tfaults\tsys ms\tms\tpeak RSS GiB")
    for size in args.sizes:
        results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for round_ in range(args.rounds):
            for label in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
                env = dict(os.environ)
                env.pop("DFINE_MALLOC", None)
                if label == "B":
                    env["DFINE_MALLOC"] = "default"
                cmd = [sys.executable, __file__, "--child", size, "--img-size", str(args.img_size),
                       "--threads", str(args.threads), "--warmup", str(args.warmup),
                       "--iters", str(args.iters)] + (["--train-step"] if args.train_step else [])
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                    print(f"error: {size} {label}: {last}", file=sys.stderr)
                    return 1
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results[label].append(row)
                print(f"{size}\t{label}\t{round_}\t{row['faults']:.0f}\t{row['sys_ms']:.1f}\t"
                      f"{row['ms']:.1f}\t{row['peak_rss_gib']:.2f}", flush=True)
        medians = {k: {f: statistics.median(r[f] for r in rows) for f in rows[0] if f != "malloc"}
                   for k, rows in results.items()}
        a, b = medians["A"], medians["B"]
        print(f"{size}\tmedian A\t-\t{a['faults']:.0f}\t{a['sys_ms']:.1f}\t{a['ms']:.1f}\t"
              f"{a['peak_rss_gib']:.2f}")
        print(f"{size}\tmedian B\t-\t{b['faults']:.0f}\t{b['sys_ms']:.1f}\t{b['ms']:.1f}\t"
              f"{b['peak_rss_gib']:.2f}")
        print(f"{size}\tA/B time\t-\t-\t-\t{a['ms'] / b['ms']:.3f}\t-")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
