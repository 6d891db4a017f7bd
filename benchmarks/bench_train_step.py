"""Seconds per training iteration and peak memory (RSS) of D-FINE training on the CPU.

The issue's method: size N, batch 4, 640x640, 2 threads, AMP off, denoising on; random
images with a few boxes each; forward + criterion + backward + gradient clipping + AdamW +
EMA update.

    python benchmarks/bench_train_step.py --size n --batch 4 --img-size 640 --iters 10

``--compile`` runs the forward through ``torch.compile`` as ``dfine train --compile`` does
(compilation happens in the first warm-up step, whose time is printed);
``--compare-compile`` alternates fresh processes of this tree compiled (A) and eager (B);
``--compare SRC --compile`` runs A compiled against B eager.
Like ``dfine train`` on the CPU, the step runs channels-last when the tree under test does
(``--contiguous`` forces the contiguous layout; ``--compare-layout`` alternates fresh
processes of this tree channels-last (A) and contiguous (B)).
``--profile`` prints the torch profiler's top ops and the time per part of the step
(backbone, encoder, decoder, deformable sampling, matcher, criterion, backward, optimizer,
EMA). ``--compare SRC`` measures this tree against another copy of the package's ``src``
folder (e.g. ``git archive HEAD src | tar -x -C /tmp/base``), alternating A, B, A, B, ...
in fresh processes so that machine load hits both alike; it prints medians per tree.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: Parts of the step labelled in the profile: (label, module attribute path or None).
_MODULE_PARTS = (("backbone", "backbone"), ("encoder", "encoder"), ("decoder", "decoder"))


def _trains_channels_last() -> bool:
    """Whether the tree under test trains channels-last on the CPU (what its trainer does)."""
    from dfine_cli.models import layers

    return hasattr(layers, "AccurateBatchNorm2d")


def _make_step(args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None]]:
    """Build model, criterion, optimizer and EMA; return ``(step, label_parts)``."""
    from dfine_cli.engine.criterion import build_criterion
    from dfine_cli.engine.optim import ModelEMA, build_param_groups
    from dfine_cli.models.build import build_model

    torch.set_num_threads(args.threads)
    try:  # as `dfine train` runs (DFINE_MALLOC=default: glibc's own)
        from dfine_cli.allocator import keep_freed_memory

        keep_freed_memory()
    except ImportError:  # an older tree (``--compare``)
        pass
    torch.manual_seed(0)
    model = build_model(args.size, num_classes=80, variant=args.recipe).train()
    criterion = build_criterion(args.recipe)  # type: ignore[arg-type]
    try:
        from dfine_cli.engine.recipes import official_recipe

        optim_recipe = official_recipe(args.recipe, args.size).optim
    except ImportError:  # an older tree (``--compare``): the table lived in engine/optim.py
        from dfine_cli.engine import optim as optim_module

        optim_recipe = optim_module.OPTIM_RECIPES[(args.recipe, args.size)]  # type: ignore[attr-defined]
    images = torch.rand(args.batch, 3, args.img_size, args.img_size)
    if _trains_channels_last() and not args.contiguous:  # as `dfine train` on the CPU
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    groups = build_param_groups(model, optim_recipe)
    try:
        from dfine_cli.engine.optim import build_optimizer  # type: ignore[attr-defined]

        optim = build_optimizer(groups)
    except ImportError:  # an older tree (``--compare``)
        optim = torch.optim.AdamW(groups)
    ema = ModelEMA(model, 0.9999, 2000)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(args.batch):
        n = 6
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
        labels = torch.randint(0, 80, (n,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([cxcy, wh], 1)})

    rf = torch.profiler.record_function
    forward: Any = model
    if args.compile:
        from dfine_cli.torch_compile import compile_module

        forward = compile_module(model, torch.device("cpu"))

    def step() -> None:
        out = forward(images, targets)
        with rf("## criterion"):
            loss = criterion(out, targets).total
        optim.zero_grad(set_to_none=True)
        with rf("## backward"):
            loss.backward()
        with rf("## clip+optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optim.step()
        with rf("## ema"):
            ema.update(model)

    def label_parts() -> None:
        """Wrap submodules and functions in profiler ranges (forward only)."""
        import dfine_cli.engine.matcher as matcher_module
        import dfine_cli.models.deformable_attention as attention_module

        def wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*a: Any, **k: Any) -> Any:
                with rf(label):
                    return fn(*a, **k)

            return wrapped

        for label, attr in _MODULE_PARTS:
            module = getattr(model, attr)
            module.forward = wrap(f"## {label}", module.forward)
        attention_module.deformable_sample = wrap(
            "## deformable_sample", attention_module.deformable_sample
        )
        cls = matcher_module.HungarianMatcher
        cls.__call__ = wrap("## matcher", cls.__call__)  # type: ignore[method-assign]

    return step, label_parts


def _run(args: argparse.Namespace) -> None:
    step, label_parts = _make_step(args)
    for i in range(args.warmup):
        start = time.perf_counter()
        step()
        if i == 0 and args.compile:
            print(f"first step (compilation included): {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
    if args.profile:
        label_parts()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / args.iters / 1e6
        print(f"profiled {args.iters} steps; {total:.3f} s/step of op time")
        print("parts (inclusive CPU seconds per step; the forward parts nest):")
        for e in sorted(events, key=lambda e: -e.cpu_time_total):
            if e.key.startswith("## "):
                print(f"  {e.key[3:]:<20} {e.cpu_time_total / args.iters / 1e6:8.3f}")
        print(f"top {args.top} ops by self CPU time (seconds per step, calls per step):")
        ops = [e for e in events if not e.key.startswith("## ")]
        for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            share = e.self_cpu_time_total / args.iters / 1e6
            print(f"  {e.key:<45} {share:8.4f} {e.count / args.iters:7.1f}")
        return
    times, cpu_times = [], []
    for _ in range(args.iters):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if args.machine:
        print(" ".join(f"{t:.4f}" for t in times), f"rss={rss_gib:.4f}")
        print(" ".join(f"{c:.4f}" for c in cpu_times))
        return
    print(
        f"torch {torch.__version__}, {args.recipe}-{args.size}, batch {args.batch}, "
        f"{args.img_size}x{args.img_size}, threads {args.threads}, AMP off, denoising on"
    )
    print(
        f"seconds/iteration: median {statistics.median(times):.3f}, min {min(times):.3f}, "
        f"max {max(times):.3f}"
    )
    print(f"peak RSS: {rss_gib:.2f} GiB")


def _compare(args: argparse.Namespace, passthrough: list[str]) -> None:
    """Alternate fresh processes of this tree (A) and ``args.compare`` (B)."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    if args.compare_compile:  # one tree, two modes: (src, extra arguments)
        trees = {"A (compiled)": (here, ["--compile"]), "B (eager)": (here, [])}
    elif args.compare_layout:
        trees = {"A (channels-last)": (here, []), "B (contiguous)": (here, ["--contiguous"])}
    else:  # with --compile, A runs compiled
        trees = {f"A (this tree{', compiled' if args.compile else ''})":
                 (here, ["--compile"] if args.compile else []),
                 f"B ({args.compare})": (str(Path(args.compare).resolve()), [])}
    times: dict[str, list[float]] = {k: [] for k in trees}
    rss: dict[str, list[float]] = {k: [] for k in trees}
    cpu_times: dict[str, list[float]] = {k: [] for k in trees}
    loads = []
    for _ in range(args.rounds):
        for name, (src, extra) in trees.items():
            env = dict(os.environ, PYTHONPATH=src)
            out = subprocess.run(
                [sys.executable, __file__, "--machine", *passthrough, *extra],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.splitlines()
            wall, cpu = out[0].split(), out[1].split()
            times[name] += [float(v) for v in wall[:-1]]
            rss[name].append(float(wall[-1].split("=")[1]))
            cpu_times[name] += [float(v) for v in cpu]
            loads.append(os.getloadavg()[0])
    print(
        f"torch {torch.__version__}, {args.recipe}-{args.size}, batch {args.batch}, "
        f"{args.img_size}x{args.img_size}, threads {args.threads}, {args.rounds} rounds A/B "
        f"x {args.iters} iterations; 1-min load average {min(loads):.2f}..{max(loads):.2f}"
    )
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    for name in trees:
        print(
            f"{name:<40} median {medians[name]:.3f} s/it (min {min(times[name]):.3f}), "
            f"CPU {cpu_medians[name]:.3f} s/it, peak RSS {max(rss[name]):.2f} GiB"
        )
    a, b = medians.values()
    cpu_a, cpu_b = cpu_medians.values()
    print(f"ratio A/B: wall {a / b:.3f}, CPU time {cpu_a / cpu_b:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="n")
    parser.add_argument("--recipe", default="dfine", choices=["dfine", "deim"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print the profiler's top ops")
    parser.add_argument("--top", type=int, default=25, help="ops listed by --profile")
    parser.add_argument("--compare", metavar="SRC", help="another tree's src folder (A/B)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward")
    parser.add_argument("--compare-compile", action="store_true",
                        help="A/B: this tree compiled against eager")
    parser.add_argument("--contiguous", action="store_true",
                        help="train in the contiguous layout instead of channels-last")
    parser.add_argument("--compare-layout", action="store_true",
                        help="A/B: this tree channels-last against contiguous")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds of --compare")
    parser.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.compare or args.compare_compile or args.compare_layout:
        passthrough = [
            f"--size={args.size}",
            f"--recipe={args.recipe}",
            f"--batch={args.batch}",
            f"--img-size={args.img_size}",
            f"--threads={args.threads}",
            f"--warmup={args.warmup}",
            f"--iters={args.iters}",
        ]
        _compare(args, passthrough)
    else:
        _run(args)


if __name__ == "__main__":
    main()
