"""``dfine predict``: detections on images, folders, globs and videos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, report_saved, track
from dfine_cli.cli.options import (
    BACKEND_DEFAULT,
    CONF_DEFAULT,
    DEVICE_DEFAULT,
    Backend,
    BatchSize,
    Bf16,
    Compile,
    Device,
    Fp16,
    ImgSize,
    Json,
    RunFolderOutput,
    Threads,
    Variant,
    Verbose,
    WeightsPath,
    precision_option,
)
from dfine_cli.errors import DataError

ClassConf = Annotated[
    str,
    typer.Option(
        "--conf", metavar="SCORE[,CLASS=SCORE...]",
        help="Minimum score of a detection that is kept (drawn, saved, counted): one number for "
        "every class, per-class scores by class name or id ('person=0.5,car=0.3'), or both "
        "('0.3,person=0.5': 0.3 for the other classes).",
    ),
]
Classes = Annotated[
    str | None,
    typer.Option("--classes", metavar="CLASS[,CLASS...]",
                 help="Keep only these classes, by name or 0-based id ('person,car' or '0,2').",
                 show_default="all"),
]
Track = Annotated[
    bool,
    typer.Option("--track", help="Videos and streams: give detections ByteTrack ids (drawn, and "
                 "'track_id' in the JSON records). Needs the 'track' extra (supervision)."),
]


@handle_errors
def predict(
    weights: WeightsPath,
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Image, folder, glob pattern (quoted), video, webcam index (0) or stream URL (rtsp://, http://...).")],
    backend: Backend = BACKEND_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    conf: ClassConf = f"{CONF_DEFAULT:g}",
    classes: Classes = None,
    tracking: Track = False,
    img_size: ImgSize = None,
    batch_size: BatchSize = 1,
    output: RunFolderOutput = None,
    json_out: Json = False,
    names: Annotated[str | None, typer.Option("--names", help="Class names: 'a,b,c', a text file (one per line), or a YAML/JSON list or map.", show_default="the model's")] = None,
    variant: Variant = None,
    threads: Threads = None,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Write annotated images/videos.")] = True,
    compile_: Compile = False,
    fp16: Fp16 = False,
    bf16: Bf16 = False,
    verbose: Verbose = False,
) -> None:
    """Detect objects in images and videos; write annotated copies and predictions.json.

    An image or video that cannot be read is reported (one stderr line, and in the
    'errors' list of predictions.json and --json) and skipped; every other input is
    still processed and saved, and the command then exits 3.

    A stream (webcam index, rtsp://, http://...) runs until it ends, or until Ctrl-C or SIGTERM, which keep what was written; its records go to <name>.jsonl, one line per frame as it is processed.
    """
    from dfine_cli.detection_filter import FilterSpec
    from dfine_cli.detector_options import DetectorOptions
    from dfine_cli.predict import predict_to_run_folder

    spec = FilterSpec.parse(conf, classes)  # a syntax error fails before the model loads

    options = DetectorOptions(backend=backend.value, device=device, threads=threads,
                              variant=variant.value if variant else None,
                              img_size=img_size_option(img_size), names=names, compile=compile_,
                              precision=precision_option(fp16, bf16))
    summary = predict_to_run_folder(weights, source, options=options, output=output, conf=spec,
                                    batch_size=batch_size, save=save, progress=track,
                                    track=tracking)
    out_dir = summary.output_dir
    if json_out:
        print_json({"command": "predict", "output_dir": str(out_dir), "images": summary.images,
                    "videos": summary.videos, "frames": summary.frames, "results": summary.records,
                    "streams": [st.to_dict() for st in summary.streams],
                    "errors": [e.to_dict() for e in summary.errors]})
    else:
        typer.echo(f"{summary.images} image(s), {summary.videos} video(s) ({summary.frames} frames), "
                   f"{summary.detections} detection(s) -> {out_dir}")
    report_saved(out_dir)
    if summary.errors:
        raise DataError(f"{len(summary.errors)} of {summary.inputs} input(s) could not be read "
                        f"(listed above and in {Path(out_dir) / 'predictions.json'}); the others "
                        "were processed")
