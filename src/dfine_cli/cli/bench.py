"""``dfine bench``: model size and compute, latency per stage, COCO latency with an engine,
and several deployment options side by side."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from dfine_cli.allocator import keep_freed_memory
from dfine_cli.cli._common import handle_errors, img_size_option, print_json, print_table, track
from dfine_cli.cli.options import (
    BACKEND_DEFAULT,
    DEVICE_DEFAULT,
    Backend,
    BatchSize,
    Bf16,
    Compile,
    Device,
    Fp16,
    ImgSize,
    Json,
    MaxImages,
    OptionalData,
    Split,
    Threads,
    Variant,
    Verbose,
    precision_option,
)
from dfine_cli.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Measure model size, compute, latency and accuracy.")


@app.callback()
def group(verbose: Verbose = False) -> None:
    """-v/--verbose is accepted here too, between the group and its command."""


def _parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480) as (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--source-size must look like 640x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise UsageError(f"--source-size must be positive, got {text!r}")
    return w, h


# --------------------------------------------------------------------------- info


@app.command("info")
@handle_errors
def info(
    models: Annotated[list[str], typer.Argument(metavar="WEIGHTS...", help="Preset names (n s m l x) and/or checkpoints.")],
    img_size: Annotated[int | None, typer.Option("--img-size", help="Network input side in pixels, a positive multiple of 32.", show_default="the model's; 640 for a preset")] = None,
    variant: Variant = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Parameters, GFLOPs and MACs next to the official figures for the same size."""
    from dfine_cli.bench.flops import complexity_of, difference_note

    results = complexity_of(models, img_size_option(img_size), variant.value if variant else None)
    if json_out:
        print_json({"command": "bench info", "models": [
            {"model": name, **r.to_dict(), "note": difference_note(r)} for name, r in results]})
        return
    rows = []
    for name, r in results:
        o = r.official
        rows.append((
            name, f"{r.img_size[0]}x{r.img_size[1]}", f"{r.params_deploy:,}",
            f"{o.counter_params:,}" if o and o.counter_params else "-",
            f"{o.params_m:g}M" if o else "-", f"{r.gflops:.3f}", f"{r.gmacs:.3f}",
            f"{o.counter_gflops:g}" if o and o.counter_gflops else "-",
            f"{o.gflops:g}" if o else "-",
        ))
    print_table("model complexity (deploy model, batch 1)",
                ["model", "input", "params", "official counter", "README", "GFLOPs", "GMACs",
                 "official GFLOPs", "README GFLOPs"], rows)
    for name, r in results:
        typer.echo(f"{name}: {difference_note(r)}", err=True)
    typer.echo("GFLOPs: torch FlopCounterMode (convolutions and matrix products, 2 per MAC); "
               "official: calflops (adds element-wise operations, misses fused attention)",
               err=True)


# --------------------------------------------------------------------------- latency


@app.command("latency")
@handle_errors
def latency(
    weights: Annotated[str, typer.Argument(metavar="WEIGHTS", help="Checkpoint, .onnx, .xml, .engine, or a preset name (n s m l x; random weights).")],
    backend: Backend = BACKEND_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    batch_size: BatchSize = 1,
    img_size: ImgSize = None,
    threads: Threads = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed iterations first.")] = 10,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Timed iterations.")] = 50,
    compile_: Compile = False,
    fp16: Fp16 = False,
    bf16: Bf16 = False,
    source_size: Annotated[str, typer.Option("--source-size", help="Size WxH of the synthetic input images.")] = "640x480",
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Preprocess, model, postprocess and end-to-end latency (median, p90, min) and throughput."""
    from dfine_cli.bench.latency import run_latency

    precision = precision_option(fp16, bf16)
    img_size_option(img_size)
    keep_freed_memory()  # as predict and eval run
    with tempfile.TemporaryDirectory(prefix="dfine-bench-") as tmp:
        result = run_latency(weights, backend=backend.value, precision=precision, device=device,
                             threads=threads, batch_size=batch_size, img_size=img_size,
                             source_size=_parse_size(source_size), warmup=warmup, iters=iters,
                             work_dir=Path(tmp), compile=compile_)
    if json_out:
        print_json({"command": "bench latency", **result.to_dict()})
        return
    s = result.setup
    print_table(
        f"{Path(str(weights)).name}: {s.backend_description}, {s.precision}"
        f"{', compiled' if s.compiled else ''}, batch {s.batch_size}, "
        f"{s.img_size[0]}x{s.img_size[1]}, {s.threads} threads",
        ["stage", "median ms", "p90 ms", "min ms", "mean ms"], result.rows(),
    )
    typer.echo(f"throughput: {result.throughput:.2f} images/s (median end to end)")
    versions = ", ".join(f"{k} {v}" for k, v in s.versions.items() if v)
    typer.echo(f"setup: {s.cpu['model']}, {versions}; warmup {s.warmup}, iters {s.iters}, "
               f"source images {s.source_size[0]}x{s.source_size[1]}", err=True)


# --------------------------------------------------------------------------- trt


@app.command("trt")
@handle_errors
def trt(
    weights: Annotated[Path, typer.Argument(metavar="ENGINE", help="TensorRT engine built by 'dfine export --format engine'.")],
    data: Annotated[Path, typer.Option("--data", help="Folder of images, e.g. COCO val2017/.")],
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="Images timed (official: 1000).")] = 1000,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Warm-up runs (official: 1000).")] = 1000,
    device: Device = DEVICE_DEFAULT,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Engine latency over COCO val images, as the official trt_benchmark.py measures it."""
    from dfine_cli.bench.trt_coco import engine_coco_latency

    result = engine_coco_latency(weights, data, max_images=max_images, warmup=warmup,
                                 device=device, progress=track)
    if json_out:
        print_json({"command": "bench trt", "engine": str(weights), **result.to_dict()})
        return
    m, p = result.model, result.preprocess
    print_table(f"{weights.name} over {result.images} images ({result.description})",
                ["stage", "mean ms", "median ms", "p90 ms", "min ms"],
                [("engine", f"{m.mean_ms:.3f}", f"{m.median_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.min_ms:.3f}"),
                 ("decode+preprocess", f"{p.mean_ms:.3f}", f"{p.median_ms:.3f}", f"{p.p90_ms:.3f}",
                  f"{p.min_ms:.3f}")])


# --------------------------------------------------------------------------- compare


@app.command("compare")
@handle_errors
def compare(
    weights: Annotated[list[str], typer.Argument(metavar="WEIGHTS...", help="Checkpoints, .onnx, .xml, .engine or preset names.")],
    run: Annotated[list[str] | None, typer.Option("--run", help="BACKEND[:PRECISION], e.g. torch, onnxruntime, openvino:bf16, openvino:int8, tensorrt; repeatable.", show_default="torch, onnxruntime, openvino [+bf16] [+int8 with --data]")] = None,
    data: OptionalData = None,
    split: Split = "val",
    device: Device = DEVICE_DEFAULT,
    threads: Threads = None,
    batch_size: BatchSize = 1,
    img_size: ImgSize = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed iterations per option.")] = 5,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Timed iterations per option.")] = 20,
    max_images: MaxImages = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Latency of several backends/precisions in one table, next to mAP with --data.

    AP, AP50 and delta AP are fractions (0..1), as 'dfine eval' prints them.
    """
    from dfine_cli.bench import compare as cmp

    img_size_option(img_size)
    keep_freed_memory()  # as predict and eval run
    runs = [cmp.parse_run(r) for r in run] if run else cmp.default_runs(int8=data is not None)
    with tempfile.TemporaryDirectory(prefix="dfine-bench-") as tmp:
        rows = cmp.compare(weights, runs, data=data, split=split, device=device, threads=threads,
                           batch_size=batch_size, img_size=img_size, warmup=warmup, iters=iters,
                           max_images=max_images, work_dir=Path(tmp), progress=track)
    if json_out:
        print_json({"command": "bench compare", "data": str(data) if data else None,
                    "split": split, "rows": [r.to_dict() for r in rows]})
        return
    print_table("deployment options (latency end to end; AP on --data)", cmp.COLUMNS,
                [r.cells() for r in rows])
