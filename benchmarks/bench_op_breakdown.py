"""Where a CPU path's time goes: operator time by kind, next to what the machine can do.

For each size and path, one forward at a time (batch 1, ``--img-size``, ``--threads``
threads), ``--iters`` forwards are profiled and their operator time is summed by kind:

- torch paths (``torch:fp32``, ``torch:bf16``, ``torch:fp32+compile``...): ``torch.profiler``
  self time per operator. Convolutions, linears/matmuls and attention are also given as
  GFLOP/s (the model's FLOPs of that kind, counted as ``dfine bench info`` counts them) and
  as a share of this machine's measured peak for the path's precision;
- OpenVINO paths (``openvino:fp32``, ``openvino:bf16``, ``openvino:int8``,
  ``openvino:int8+bf16``): the plugin's own per-node counters (``PERF_COUNT``), by node type
  and the precision each node ran in (``I8``, ``FP32``, ``BF16``...).

The header gives the machine's measured peaks: a oneDNN 3x3 convolution (channels-last,
256 -> 256 channels at 80x80) and a 2048-square matrix product, fp32 and (where the CPU has
it) bf16. A path's "at peak" time is its FLOPs over those peaks (convolutions at the
convolution peak, the rest at the matmul peak): how far any kernel work can take it.

    python benchmarks/bench_op_breakdown.py --sizes n s --paths torch:fp32 torch:fp32+compile
    python benchmarks/bench_op_breakdown.py --sizes n --paths openvino:bf16 openvino:int8+bf16 --keyed

Profiling adds a little time per operator: the sums are for proportions, and latency comes
from ``bench_cpu_paths.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfine_cli.backends.openvino_backend import OpenVINOBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu_paths import (  # the benchmarks folder, put on the path above
    _keyed_checkpoint,
    add_shared_arguments,
    check_keyed_reference,
    load_path,
    measured_peaks,
    run_script,
)

TORCH_PATHS = ["torch:fp32", "torch:bf16", "torch:fp32+compile", "torch:bf16+compile"]
OPENVINO_PATHS = ["openvino:fp32", "openvino:bf16", "openvino:int8", "openvino:int8+bf16"]

#: torch operator names -> kind (the first key found in the lower-cased name wins).
TORCH_KINDS = [
    ("convolution", "conv"),
    ("linear", "linear/matmul"), ("addmm", "linear/matmul"), ("aten::mm", "linear/matmul"),
    ("bmm", "linear/matmul"), ("matmul", "linear/matmul"),
    ("scaled_dot_product", "attention"), ("softmax", "attention"),
    ("grid_sampler", "sampling"), ("index", "sampling"), ("gather", "sampling"),
    ("topk", "top-k"), ("sort", "top-k"),
    ("compiledfxgraph", "generated kernels"), ("cpp_fused", "generated kernels"),
]
#: FlopCounterMode operator names -> kind (counted on the official deploy view, whose
#: multi-head attention computes its two products with ``bmm``).
FLOP_KINDS = {"aten.convolution": "conv", "aten.addmm": "linear/matmul", "aten.mm": "linear/matmul",
              "aten.bmm": "attention"}
#: OpenVINO node types -> kind.
OPENVINO_KINDS = {"Convolution": "conv", "GroupConvolution": "conv", "MatMul": "linear/matmul",
                  "ScaledDotProductAttention": "attention",
                  "Softmax": "attention", "GridSample": "sampling", "Gather": "sampling",
                  "GatherElements": "sampling", "TopK": "top-k", "Reorder": "reorders"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, warmup=3, iters=10)
    parser.add_argument("--paths", nargs="*", default=["torch:fp32", "openvino:fp32"],
                        choices=TORCH_PATHS + OPENVINO_PATHS)
    parser.add_argument("--top", type=int, default=0,
                        help="also list the N most expensive operators / nodes of each path")
    args = parser.parse_args(argv)
    check_keyed_reference(parser, args, args.keyed)

    from dfine_cli.allocator import keep_freed_memory
    from dfine_cli.bench.flops import model_complexity
    from dfine_cli.bench.latency import cpu_description, synthetic_images
    from dfine_cli.models.presets import preset

    keep_freed_memory()  # as the dfine commands run
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    peaks = measured_peaks(args.threads, bf16=bool(cpu["bf16"]))
    print(f"# {cpu['model']}, {args.threads} threads, batch 1, {args.img_size}x{args.img_size}, "
          f"{args.iters} profiled forwards after {args.warmup}")
    print("# measured peaks (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    image = synthetic_images(1, args.img_size, args.img_size)[0]
    print("size\tpath\tkind\tms per forward\tshare\tGFLOPs\tGFLOP/s\t% of peak")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_cache: dict[str, Path] = {}
        for size in args.sizes:
            complexity = model_complexity(preset(size, num_classes=80), (args.img_size,) * 2)
            flops: dict[str, float] = defaultdict(float)
            for op, n in complexity.flops_by_operator.items():
                flops[FLOP_KINDS.get(op, "other")] += n / 1e9
            weights = _keyed_checkpoint(args.reference, size, work) if args.keyed else size
            for path in args.paths:
                try:
                    det = _loaded(weights, path, args, work, onnx_cache)
                    kinds, top = _breakdown(det, args, image)
                except Exception as exc:  # a path this machine cannot run (bf16, nncf missing)
                    print(f"{size}\t{path}\tn/a ({str(exc).splitlines()[0][:100]})", flush=True)
                    continue
                _print_path(size, path, kinds, flops, peaks)
                for name, ms in top[: args.top]:
                    print(f"#   {size} {path} {ms:8.2f} ms  {name}")
    return 0


def _loaded(weights: str, path: str, args: argparse.Namespace, work: Path,
            onnx_cache: dict[str, Path]) -> Any:
    """The detector a path measures, as ``bench_cpu_paths.py`` loads it (an OpenVINO one with
    its per-node counters on: they are set before its first, compiling, call)."""
    det = load_path(weights, path, args, work, onnx_cache)
    if isinstance(det.backend, OpenVINOBackend):
        det.backend.config["PERF_COUNT"] = True
    return det


def _breakdown(det: Any, args: argparse.Namespace,
               image: np.ndarray) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Time per kind and per operator (torch) or node (OpenVINO), in ms per forward."""
    from torch.profiler import ProfilerActivity, profile

    from dfine_cli.detector import preprocess

    batch = preprocess([image], det.img_size)
    sizes = np.array([[image.shape[1], image.shape[0]]], dtype=np.int64)
    for _ in range(max(1, args.warmup)):
        det.backend(batch, sizes)
    by_name: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    if isinstance(det.backend, OpenVINOBackend):  # its own counters, per inference
        for _ in range(args.iters):
            det.backend(batch, sizes)
            for info in det.backend.node_counters():
                ms = info.real_time.total_seconds() * 1e3 / args.iters
                if ms <= 0:
                    continue
                ran_in = info.exec_type.rsplit("_", 1)[-1].upper() if "_" in info.exec_type else "?"
                kinds[f"{_openvino_kind(info.node_type)} ({ran_in})"] += ms
                by_name[f"{info.node_type} {info.exec_type} {info.node_name}"] += ms
    else:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                det.backend(batch, sizes)
        for event in prof.key_averages():
            by_name[event.key] += event.self_cpu_time_total / 1e3 / args.iters
        for name, ms in by_name.items():
            lowered = name.lower()
            kinds[next((kind for key, kind in TORCH_KINDS if key in lowered), "other")] += ms
    return kinds, sorted(by_name.items(), key=lambda kv: -kv[1])


def _openvino_kind(node_type: str) -> str:
    if node_type.startswith("FullyConnected"):  # also ...Quantized, ...QuantizedLegacy
        return "linear/matmul"
    return OPENVINO_KINDS.get(node_type, "other")


def _print_path(size: str, path: str, kinds: dict[str, float], flops: dict[str, float],
                peaks: dict[str, float]) -> None:
    """One row per kind (most expensive first), then the total. FLOP rates for torch paths
    only: OpenVINO fuses and splits operators, so its nodes do not map onto counted FLOPs."""
    total = sum(kinds.values())
    bf16 = "bf16" in path
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        gflops = flops.get(kind, 0.0) if path.startswith("torch") and kind != "other" else 0.0
        row = [size, path, kind, f"{ms:.2f}", f"{100 * ms / total:.0f}%"]
        if gflops and ms > 0:
            rate = gflops / ms * 1e3
            peak = _peak_for(kind, bf16, peaks)
            row += [f"{gflops:.2f}", f"{rate:.0f}", f"{100 * rate / peak:.0f}" if peak else "-"]
        else:
            row += ["-", "-", "-"]
        print("\t".join(row))
    # INT8 kernels have a peak of their own (not measured here): no "at peak" for them
    at_peak = sum(v / _peak_for(k, bf16, peaks) * 1e3 for k, v in flops.items()
                  if _peak_for(k, bf16, peaks))
    label = ("-" if "int8" in path else
             f"at {'bf16' if bf16 and 'conv bf16' in peaks else 'fp32'} peak {at_peak:.1f} ms")
    print(f"{size}\t{path}\ttotal\t{total:.2f}\t100%\t{sum(flops.values()):.2f}\t"
          f"{sum(flops.values()) / total * 1e3:.0f}\t{label}", flush=True)


def _peak_for(kind: str, bf16: bool, peaks: dict[str, float]) -> float:
    suffix = "bf16" if bf16 and "conv bf16" in peaks else "fp32"
    return peaks.get(f"conv {suffix}" if kind == "conv" else f"matmul {suffix}", 0.0)


if __name__ == "__main__":
    sys.exit(run_script(main))
