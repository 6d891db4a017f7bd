"""``dfine bench``: model size and compute, latency per stage, COCO latency with an engine,
and several deployment options side by side."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, print_table, track
from dfine_cli.cli.commands_core import VariantChoice
from dfine_cli.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Measure model size, compute, latency and accuracy.")


class BenchBackend(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    tensorrt = "tensorrt"


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
def info(
    models: list[str] = typer.Argument(..., help="Preset names (n s m l x) and/or checkpoints."),
    img_size: int = typer.Option(640, "--img-size", help="Square input size (multiple of 32)."),
    variant: VariantChoice = typer.Option(None, help="Decoder variant of official .pth files (dfine or deim)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameters, GFLOPs and MACs next to the official figures for the same size."""
    handle_errors(_info)(models, img_size, variant, json_out)


def _info(models, img_size, variant, json_out) -> None:
    from dfine_cli.bench.flops import difference_note, model_complexity
    from dfine_cli.bench.latency import is_preset_name
    from dfine_cli.models.presets import preset

    size = img_size_option(img_size)
    assert size is not None  # the option defaults to 640
    chosen = variant.value if variant else None
    results = []
    for name in models:
        if is_preset_name(name):
            cfg = preset(name.lower(), num_classes=80, variant=chosen or "dfine")
        else:
            from dfine_cli.checkpoint import read_checkpoint

            cfg = read_checkpoint(name, variant=chosen).info.config
        results.append((name, model_complexity(cfg, size)))
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
def latency(
    weights: str = typer.Argument(..., help="Checkpoint, .onnx, .engine, or a preset name (n s m l x; random weights)."),
    backend: BenchBackend = typer.Option(BenchBackend.torch, help="Inference backend."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(1, min=1, help="Images per forward pass."),
    img_size: int = typer.Option(None, "--img-size", help="Network input size; default: the model's."),
    threads: int = typer.Option(None, min=1, help="CPU threads (torch, ONNX Runtime, OpenVINO)."),
    warmup: int = typer.Option(10, min=0, help="Untimed iterations first."),
    iters: int = typer.Option(50, min=1, help="Timed iterations."),
    fp16: bool = typer.Option(False, "--fp16", help="float16 (torch on CUDA, OpenVINO where supported)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 (torch autocast, OpenVINO) on CPUs with bf16."),
    source_size: str = typer.Option("640x480", help="Size WxH of the synthetic input images."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Preprocess, model, postprocess and end-to-end latency (median, p90, min) and throughput."""
    handle_errors(_latency)(weights, backend, device, batch_size, img_size, threads, warmup,
                            iters, fp16, bf16, source_size, json_out)


def _precision(fp16: bool, bf16: bool) -> str:
    if fp16 and bf16:
        raise UsageError("choose one of --fp16 and --bf16")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def _latency(weights, backend, device, batch_size, img_size, threads, warmup, iters, fp16, bf16,
             source_size, json_out) -> None:
    from dfine_cli.bench.latency import run_latency

    precision = _precision(fp16, bf16)
    img_size_option(img_size)
    with tempfile.TemporaryDirectory(prefix="dfine-bench-") as tmp:
        result = run_latency(weights, backend=backend.value, precision=precision, device=device,
                             threads=threads, batch_size=batch_size, img_size=img_size,
                             source_size=_parse_size(source_size), warmup=warmup, iters=iters,
                             work_dir=Path(tmp))
    if json_out:
        print_json({"command": "bench latency", **result.to_dict()})
        return
    s = result.setup
    print_table(
        f"{Path(str(weights)).name}: {s.backend_description}, {s.precision}, batch {s.batch_size}, "
        f"{s.img_size[0]}x{s.img_size[1]}, {s.threads} threads",
        ["stage", "median ms", "p90 ms", "min ms", "mean ms"], result.rows(),
    )
    typer.echo(f"throughput: {result.throughput:.2f} images/s (median end to end)")
    versions = ", ".join(f"{k} {v}" for k, v in s.versions.items() if v)
    typer.echo(f"setup: {s.cpu['model']}, {versions}; warmup {s.warmup}, iters {s.iters}, "
               f"source images {s.source_size[0]}x{s.source_size[1]}", err=True)


# --------------------------------------------------------------------------- trt


@app.command("trt")
def trt(
    engine: Path = typer.Option(..., "--engine", help="TensorRT engine built by 'dfine export --format engine'."),
    coco_dir: Path = typer.Option(..., "--coco-dir", help="Folder of images, e.g. COCO val2017/."),
    max_images: int = typer.Option(1000, min=1, help="Images timed (official: 1000)."),
    warmup: int = typer.Option(1000, min=0, help="Warm-up runs (official: 1000)."),
    device: str = typer.Option("cuda", help="cuda or cuda:N."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Engine latency over COCO val images, as the official trt_benchmark.py measures it."""
    handle_errors(_trt)(engine, coco_dir, max_images, warmup, device, json_out)


def _trt(engine, coco_dir, max_images, warmup, device, json_out) -> None:
    from dfine_cli.backends.tensorrt_backend import TensorRTBackend
    from dfine_cli.bench.trt_coco import coco_latency, list_images
    from dfine_cli.detector import Detector

    paths = list_images(coco_dir, max_images)
    detector = Detector(TensorRTBackend(Path(engine), device=device))
    result = coco_latency(detector, paths, warmup=warmup,
                          progress=lambda it, desc, total: track(it, desc, total))
    if json_out:
        print_json({"command": "bench trt", "engine": str(engine), **result.to_dict()})
        return
    m, p = result.model, result.preprocess
    print_table(f"{Path(engine).name} over {result.images} images ({result.description})",
                ["stage", "mean ms", "median ms", "p90 ms", "min ms"],
                [("engine", f"{m.mean_ms:.3f}", f"{m.median_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.min_ms:.3f}"),
                 ("decode+preprocess", f"{p.mean_ms:.3f}", f"{p.median_ms:.3f}", f"{p.p90_ms:.3f}",
                  f"{p.min_ms:.3f}")])


# --------------------------------------------------------------------------- compare


@app.command("compare")
def compare(
    weights: list[str] = typer.Argument(..., help="Checkpoints, .onnx, .engine or preset names."),
    run: list[str] = typer.Option([], "--run", help="BACKEND[:PRECISION], e.g. torch, onnxruntime, openvino:bf16, openvino:int8, tensorrt; repeatable (default: torch, onnxruntime, openvino [+bf16] [+int8 with --data])."),
    data: Path = typer.Option(None, help="Dataset (folder or YAML) to measure mAP on."),
    split: str = typer.Option("val", help="Split of --data."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(None, min=1, help="CPU threads."),
    batch_size: int = typer.Option(1, min=1, help="Images per forward pass."),
    img_size: int = typer.Option(None, "--img-size", help="Network input size; default: the model's."),
    warmup: int = typer.Option(5, min=0, help="Untimed iterations per option."),
    iters: int = typer.Option(20, min=1, help="Timed iterations per option."),
    max_images: int = typer.Option(None, min=1, help="Evaluate only the first N images of the split."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Latency of several backends/precisions in one table, next to mAP with --data."""
    handle_errors(_compare)(weights, run, data, split, device, threads, batch_size, img_size,
                            warmup, iters, max_images, json_out)


def _compare(weights, run, data, split, device, threads, batch_size, img_size, warmup, iters,
             max_images, json_out) -> None:
    from dfine_cli.bench import compare as cmp

    img_size_option(img_size)
    runs = [cmp.parse_run(r) for r in run] if run else cmp.default_runs(int8=data is not None)
    with tempfile.TemporaryDirectory(prefix="dfine-bench-") as tmp:
        rows = cmp.compare(weights, runs, data=data, split=split, device=device, threads=threads,
                           batch_size=batch_size, img_size=img_size, warmup=warmup, iters=iters,
                           max_images=max_images, work_dir=Path(tmp),
                           progress=lambda it, desc, total: track(it, desc, total))
    if json_out:
        print_json({"command": "bench compare", "data": str(data) if data else None,
                    "split": split, "rows": [r.to_dict() for r in rows]})
        return
    print_table("deployment options (latency end to end; AP on --data)", cmp.COLUMNS,
                [r.cells() for r in rows])
