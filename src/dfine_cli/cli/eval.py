"""``dfine eval``: COCO mAP of a checkpoint or exported model on a dataset split."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dfine_cli.cli._common import (
    handle_errors,
    img_size_option,
    print_json,
    print_table,
    report_saved,
    track,
)
from dfine_cli.cli.options import (
    BACKEND_DEFAULT,
    DEVICE_DEFAULT,
    Backend,
    BatchSize,
    Bf16,
    Compile,
    Data,
    Device,
    Fp16,
    ImgSize,
    Json,
    RunFolderOutput,
    Split,
    Threads,
    Variant,
    Verbose,
    WeightsPath,
    precision_option,
)


@handle_errors
def evaluate(
    weights: WeightsPath,
    data: Data,
    split: Split = "val",
    backend: Backend = BACKEND_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    batch_size: BatchSize = 4,
    img_size: ImgSize = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data-loading worker processes.")] = 2,
    variant: Variant = None,
    threads: Threads = None,
    evaluator: Annotated[str, typer.Option("--evaluator", help="faster (faster-coco-eval) or pycocotools.")] = "faster",
    output: RunFolderOutput = None,
    compile_: Compile = False,
    fp16: Fp16 = False,
    bf16: Bf16 = False,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """COCO bbox mAP (12 numbers) plus per-class AP, precision and recall.

    Writes metrics.json and per_class.csv into the run folder.
    """
    from dfine_cli.detector_options import DetectorOptions
    from dfine_cli.engine.eval_run import evaluate_weights

    options = DetectorOptions(backend=backend.value, device=device, threads=threads,
                              variant=variant.value if variant else None,
                              img_size=img_size_option(img_size),
                              precision=precision_option(fp16, bf16), compile=compile_)
    run = evaluate_weights(weights, data, split=split, options=options, batch_size=batch_size,
                           workers=workers, evaluator=evaluator, output=output, progress=track)
    result = run.result
    if json_out:
        print_json({"command": "eval", "weights": str(weights), "split": split,
                    "precision": options.precision, "compiled": options.compile,
                    "output_dir": str(run.output_dir),
                    **json.loads(json.dumps(result.to_json()))})
    else:
        print_table("COCO bbox", ["metric", "value"], [(k, v) for k, v in result.stats.items()])
        print_table("per class", ["class", "AP", "AP50", "precision", "recall", "gt"],
                    [(c.name, c.ap, c.ap50, c.precision, c.recall, c.num_gt) for c in result.per_class])
    report_saved(run.output_dir)
