"""Top-level commands: predict, export, info, weights convert, demo."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, print_table, track
from dfine_cli.errors import DataError, UsageError
from dfine_cli.fileio import check_output_file, remove_stale_temps


class BackendChoice(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    tensorrt = "tensorrt"


class ExportFormat(str, Enum):
    onnx = "onnx"
    engine = "engine"
    openvino = "openvino"


class VariantChoice(str, Enum):
    dfine = "dfine"
    deim = "deim"


def _read_names(path: Path) -> list[str]:
    """Class names from a text file (one per line) or a YAML/JSON list or {id: name} map."""
    from dfine_cli.fileio import read_yaml

    if not path.is_file():
        raise DataError(f"names file not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        data = read_yaml(path)
        if isinstance(data, dict) and "names" in data:
            data = data["names"]
        if isinstance(data, dict):
            return [str(data[k]) for k in sorted(data, key=int)]
        if isinstance(data, list):
            return [str(x) for x in data]
        raise DataError(f"{path}: expected a list of names or an {{id: name}} mapping")
    text = path.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def predict(
    weights: Path = typer.Argument(..., help="Checkpoint (.pth, transformers folder/.safetensors) or exported .onnx."),
    source: str = typer.Argument(..., help="Image, folder, glob pattern (quoted) or video."),
    backend: BackendChoice = typer.Option(BackendChoice.auto, help="Inference backend; auto picks by file type."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    conf: float = typer.Option(0.5, min=0.0, max=1.0, help="Minimum score to keep a detection."),
    img_size: int = typer.Option(None, "--img-size", help="Input size (multiple of 32); default: the model's."),
    batch_size: int = typer.Option(1, min=1, help="Images per forward pass."),
    output: Path = typer.Option(None, help="Output folder; default runs/predict/exp{N}."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with every detection (and an 'errors' list) on stdout."),
    names: Path = typer.Option(None, help="Class names file (txt lines, or YAML/JSON list or map)."),
    variant: VariantChoice = typer.Option(None, help="Decoder variant for official .pth files (dfine or deim)."),
    threads: int = typer.Option(None, min=1, help="CPU threads for inference."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write annotated images/videos."),
) -> None:
    """Detect objects in images and videos; write annotated copies and predictions.json.

    An image or video that cannot be read is reported (one stderr line, and in the
    'errors' list of predictions.json and --json) and skipped; every other input is
    still processed and saved, and the command then exits 3.
    """
    handle_errors(_predict)(weights, source, backend, device, conf, img_size, batch_size,
                            output, json_out, names, variant, threads, save)


def _predict(weights, source, backend, device, conf, img_size, batch_size, output, json_out,
             names, variant, threads, save) -> None:
    import torch

    from dfine_cli.detector import Detector
    from dfine_cli.fileio import run_dir
    from dfine_cli.predict import run_prediction

    size = img_size_option(img_size)
    if threads:
        torch.set_num_threads(threads)
    det = Detector.load(weights, backend=backend.value, device=device,
                        variant=variant.value if variant else None, threads=threads)
    if size is not None:
        if det.model is None and tuple(det.img_size) != size:
            raise UsageError(f"this exported model has a fixed input size {det.img_size}; "
                             "re-export it for another --img-size")
        det.backend.meta.img_size = size
    if names is not None:
        loaded = _read_names(names)
        if len(loaded) < len(det.class_names) and det.model is not None:
            raise DataError(f"{names} has {len(loaded)} names; the model has {len(det.class_names)} classes")
        det.backend.meta.class_names = loaded
    with run_dir("predict", output) as out_dir:
        summary = run_prediction(det, source, out_dir, conf=conf, batch_size=batch_size, save=save,
                                 progress=lambda it, desc, total: track(it, desc, total))
    if json_out:
        print_json({"command": "predict", "output_dir": str(out_dir), "images": summary.images,
                    "videos": summary.videos, "frames": summary.frames, "results": summary.records,
                    "errors": [e.to_dict() for e in summary.errors]})
    else:
        typer.echo(f"{summary.images} image(s), {summary.videos} video(s) ({summary.frames} frames), "
                   f"{summary.detections} detection(s) -> {out_dir}")
    if summary.errors:
        raise DataError(f"{len(summary.errors)} of {summary.inputs} input(s) could not be read "
                        f"(listed above and in {out_dir / 'predictions.json'}); the others "
                        "were processed")


def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to export (any supported format), or an .onnx for --format engine."),
    format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", "-f", help="Export format: onnx, engine (TensorRT), or openvino (IR .xml + .bin)."),
    output: Path = typer.Option(None, help="Output file; default: next to the checkpoint (.onnx / .engine / .xml)."),
    img_size: int = typer.Option(None, "--img-size", help="Input size (multiple of 32); default: the model's."),
    opset: int = typer.Option(17, min=16, help="ONNX opset."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch", help="Dynamic batch axis N."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify the graph (onnxslim)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare the export with torch / ONNX Runtime."),
    variant: VariantChoice = typer.Option(None, help="Decoder variant for official .pth files (dfine or deim)."),
    fp16: bool = typer.Option(False, "--fp16", help="Engine: FP16 (network in float16, postprocessor in float32)."),
    workspace: float = typer.Option(None, "--workspace", min=0.0, help="Engine: TensorRT workspace limit in GB (default: TensorRT's)."),
    min_batch: int = typer.Option(None, "--min-batch", min=1, help="Engine: smallest batch of the optimisation profile (1)."),
    opt_batch: int = typer.Option(None, "--opt-batch", min=1, help="Engine: batch TensorRT tunes for (min batch)."),
    max_batch: int = typer.Option(None, "--max-batch", min=1, help="Engine: largest batch of the profile (opt batch)."),
    keep_fp32: list[str] = typer.Option([], "--keep-fp32", help="Engine with --fp16: module path (glob) to keep in FP32, e.g. 'decoder.dec_bbox_head.*'; repeatable."),
    int8: bool = typer.Option(False, "--int8", help="OpenVINO: INT8 post-training quantization (NNCF), calibrated on --data images."),
    calib_images: int = typer.Option(None, "--calib-images", min=1, help="OpenVINO --int8: number of calibration images (300)."),
    data: Path = typer.Option(None, "--data", help="OpenVINO --int8: calibration images (a dataset folder, its images/train, or any image folder)."),
    json_out: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
) -> None:
    """Export a checkpoint to ONNX or OpenVINO IR, or build a TensorRT engine, and check it."""
    handle_errors(_export)(checkpoint, format, output, img_size, opset, dynamic_batch, simplify,
                           check, variant, fp16, workspace, min_batch, opt_batch, max_batch,
                           keep_fp32, json_out, int8, calib_images, data)


def _export(checkpoint, format, output, img_size, opset, dynamic_batch, simplify, check,
            variant, fp16, workspace, min_batch, opt_batch, max_batch, keep_fp32,
            json_out, int8=False, calib_images=None, data=None) -> None:
    size = img_size_option(img_size)
    if format != ExportFormat.openvino:
        ov_only = {"--int8": int8, "--calib-images": calib_images is not None, "--data": data is not None}
        used_ov = [flag for flag, given in ov_only.items() if given]
        if used_ov:
            raise UsageError(f"{', '.join(used_ov)} apply to --format openvino only")
    if format == ExportFormat.engine:
        onnx_only = {"--opset": opset != 17, "--static-batch": not dynamic_batch,
                     "--no-simplify": not simplify}
        used = [flag for flag, given in onnx_only.items() if given]
        if used:
            raise UsageError(f"{', '.join(used)} apply to --format onnx only (engines are built "
                             "from opset-17 ONNX with a dynamic batch bounded by the profile)")
        _export_engine(checkpoint, output, size, check, variant, fp16, workspace, min_batch,
                       opt_batch, max_batch, keep_fp32, json_out)
        return
    engine_only = {"--fp16": fp16, "--workspace": workspace is not None,
                   "--min-batch": min_batch is not None, "--opt-batch": opt_batch is not None,
                   "--max-batch": max_batch is not None, "--keep-fp32": bool(keep_fp32)}
    used = [flag for flag, given in engine_only.items() if given]
    if used:
        raise UsageError(f"{', '.join(used)} apply to --format engine only")
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise UsageError(f"{Path(checkpoint).name} is already ONNX; --format engine builds a TensorRT engine from it")
    from dfine_cli.checkpoint import load_weights, read_checkpoint
    from dfine_cli.export.onnx import export_onnx
    from dfine_cli.models.build import build_model_from_config

    ckpt = read_checkpoint(checkpoint, variant=variant.value if variant else None)
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict, source=str(checkpoint))
    if format == ExportFormat.openvino:
        _export_openvino(model, ckpt.info, checkpoint, output, size, opset, dynamic_batch,
                         simplify, check, int8, calib_images, data, json_out)
        return
    out = Path(output) if output else Path(checkpoint).with_suffix(".onnx")
    check_output_file(out)
    remove_stale_temps(out.parent)  # left in this folder by a killed export
    report = export_onnx(model, ckpt.info, out, img_size=size or ckpt.info.img_size, opset=opset,
                         dynamic_batch=dynamic_batch, simplify=simplify, check=check)
    _render_export(report, json_out)


def _render_export(report, json_out: bool) -> None:
    """The export's result on stdout (the path, or JSON); the check figures on stderr."""
    if json_out:
        print_json({"command": "export", **report.to_dict()})
        return
    for batch, agreement in report.checks.items():
        typer.echo(f"check batch {batch}: {agreement.describe()}", err=True)
    typer.echo(str(report.path))


def _export_openvino(model, info, checkpoint, output, size, opset, dynamic_batch, simplify,
                     check, int8, calib_images, data, json_out) -> None:
    from dfine_cli.export.openvino_ir import Int8Options, export_openvino

    if not simplify:
        raise UsageError("--no-simplify applies to --format onnx only")
    if not int8 and (calib_images is not None or data is not None):
        raise UsageError("--calib-images and --data apply with --int8 only")
    options = None
    if int8:
        if data is None:
            raise UsageError("--int8 needs calibration images: --data DIR")
        from dfine_cli.export.int8 import calibration_images

        count = calib_images or 300
        options = Int8Options(calibration_images(data, count), subset_size=count)
    out = Path(output) if output else Path(checkpoint).with_suffix(".xml")
    if out.suffix.lower() != ".xml":
        raise UsageError(f"--format openvino writes an .xml (+ .bin); got --output {out.name}")
    check_output_file(out)
    check_output_file(out.with_suffix(".bin"))
    remove_stale_temps(out.parent)  # left in this folder by a killed export
    report = export_openvino(model, info, out, img_size=size or info.img_size, opset=opset,
                             dynamic_batch=dynamic_batch, check=check, int8=options)
    _render_export(report, json_out)


def _export_engine(checkpoint, output, size, check, variant, fp16, workspace, min_batch,
                   opt_batch, max_batch, keep_fp32, json_out) -> None:
    from dfine_cli.export.tensorrt import CHECK_COLUMNS, check_table, export_engine

    out = Path(output) if output else Path(checkpoint).with_suffix(".engine")
    check_output_file(out)
    remove_stale_temps(out.parent)  # left in this folder by a killed export
    report = export_engine(checkpoint, out, fp16=fp16, workspace_gb=workspace,
                           min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                           img_size=size, keep_fp32=keep_fp32,
                           variant=variant.value if variant else None, check=check)
    if json_out:
        print_json({"command": "export", **report.to_dict()})
        return
    if report.checks:
        print_table(f"{report.precision} engine vs reference", CHECK_COLUMNS,
                    check_table(report.checks))
    typer.echo(str(report.path))


def info(
    checkpoint: Path = typer.Argument(..., help="Checkpoint or exported .onnx."),
    variant: VariantChoice = typer.Option(None, help="Decoder variant for official .pth files."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what a checkpoint holds: size, variant, classes, input size, format."""
    handle_errors(_info)(checkpoint, variant, json_out)


def _info(checkpoint, variant, json_out) -> None:
    if Path(checkpoint).suffix.lower() == ".onnx":
        from dfine_cli.export.onnx import onnx_summary

        if not Path(checkpoint).is_file():
            from dfine_cli.errors import CheckpointError

            raise CheckpointError(f"ONNX model not found: {checkpoint}")
        summary = onnx_summary(Path(checkpoint))
        if json_out:
            print_json({"command": "info", "format": "onnx", **summary})
        else:
            for kind in ("inputs", "outputs"):
                for v in summary[kind]:  # type: ignore[attr-defined]
                    typer.echo(f"{kind[:-1]}\t{v['name']}\t{v['dtype']}\t{v['shape']}")
            typer.echo(f"opset\t{summary['opset']}")
        return
    from dfine_cli.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint, variant=variant.value if variant else None)
    cfg = ckpt.info.config
    n_params = sum(v.numel() for k, v in ckpt.state_dict.items() if v.is_floating_point())
    data = {
        "path": str(checkpoint),
        "source_format": ckpt.info.source_format,
        "size": cfg.name,
        "variant": cfg.variant,
        "num_classes": cfg.num_classes,
        "class_names": ckpt.info.class_names,
        "category_ids": ckpt.info.category_ids,
        "img_size": list(ckpt.info.img_size),
        "backbone": f"HGNetv2-{cfg.backbone}",
        "decoder_layers": cfg.num_layers,
        "tensors": len(ckpt.state_dict),
        "float_elements": n_params,
        "has_training_state": ckpt.training is not None,
    }
    if json_out:
        print_json({"command": "info", **data})
        return
    rows = [(k, v if not isinstance(v, list) or len(v) <= 8 else f"{v[:8]} ... ({len(v)})") for k, v in data.items()]
    print_table("checkpoint", ["field", "value"], rows)


weights_app = typer.Typer(no_args_is_help=True, help="Official weights by name; convert checkpoints between formats.")


@weights_app.command("convert")
def weights_convert(
    src: Path = typer.Argument(..., help="Official D-FINE/DEIM .pth, transformers folder/.safetensors, or ours."),
    dst: Path = typer.Argument(..., help="Output checkpoint (our format)."),
    variant: VariantChoice = typer.Option(None, help="Decoder variant of an official file (dfine or deim)."),
    names: Path = typer.Option(None, help="Class names file to record (txt lines, YAML/JSON list or map)."),
    img_size: int = typer.Option(None, "--img-size", help="Input size to record (multiple of 32)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Write our checkpoint format from any supported checkpoint."""
    handle_errors(_weights_convert)(src, dst, variant, names, img_size, json_out)


def _weights_convert(src, dst, variant, names, img_size, json_out) -> None:
    from dfine_cli.checkpoint import load_weights, read_checkpoint, save_checkpoint
    from dfine_cli.models.build import build_model_from_config

    size = img_size_option(img_size)
    ckpt = read_checkpoint(src, variant=variant.value if variant else None)
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict, source=str(src))  # validates before writing
    info = ckpt.info
    if names is not None:
        loaded = _read_names(names)
        if len(loaded) != info.num_classes:
            raise DataError(f"{names} has {len(loaded)} names; the model has {info.num_classes} classes")
        info.class_names = loaded
    if size is not None:
        info.img_size = size
    if Path(dst).resolve() == Path(src).resolve():
        raise UsageError("destination must differ from the source")
    save_checkpoint(dst, model, info)
    summary = {"command": "weights convert", "src": str(src), "dst": str(dst),
               "source_format": info.source_format, "size": info.config.name,
               "variant": info.variant, "num_classes": info.num_classes}
    if json_out:
        print_json(summary)
    else:
        typer.echo(str(dst))


def register(app: typer.Typer) -> None:
    """Attach the core commands to ``app``."""
    app.command()(predict)
    app.command()(export)
    app.command()(info)
    from dfine_cli.cli import weights as weights_commands

    weights_commands.register(weights_app)
    app.add_typer(weights_app, name="weights")
    from dfine_cli.cli.demo import demo
    from dfine_cli.cli.eval import evaluate
    from dfine_cli.cli.train import train

    app.command()(train)
    app.command(name="eval")(evaluate)
    app.command()(demo)
