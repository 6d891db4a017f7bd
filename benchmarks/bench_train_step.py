"""Seconds per training iteration and peak memory (RSS) of D-FINE training on the CPU.

The issue's method: size N, batch 4, 640x640, 2 threads, AMP off, denoising on; random
images with a few boxes each; forward + criterion + backward + optimizer step.

    python benchmarks/bench_train_step.py --size n --batch 4 --img-size 640 --iters 10
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="n")
    parser.add_argument("--recipe", default="dfine", choices=["dfine", "deim"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    from dfine_cli.engine.criterion import build_criterion
    from dfine_cli.engine.optim import OPTIM_RECIPES, build_param_groups
    from dfine_cli.models.build import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.size, num_classes=80, variant=args.recipe).train()
    criterion = build_criterion(args.recipe)  # type: ignore[arg-type]
    optim = torch.optim.AdamW(build_param_groups(model, OPTIM_RECIPES[(args.recipe, args.size)]))
    images = torch.rand(args.batch, 3, args.img_size, args.img_size)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(args.batch):
        n = 6
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
        targets.append({"labels": torch.randint(0, 80, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})

    def step() -> None:
        out = model(images, targets)
        loss = criterion(out, targets).total
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optim.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"torch {torch.__version__}, {args.recipe}-{args.size}, batch {args.batch}, {args.img_size}x{args.img_size}, "
          f"threads {args.threads}, AMP off, denoising on")
    print(f"seconds/iteration: median {statistics.median(times):.3f}, min {min(times):.3f}, max {max(times):.3f}")
    print(f"peak RSS: {rss_gib:.2f} GiB")


if __name__ == "__main__":
    main()
