"""`dfine data ...` commands: argument parsing and rendering only; the work is in dfine_cli.data."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dfine_cli.cli._common import handle_errors, print_json, print_table, report_saved, track
from dfine_cli.cli.options import Json, Verbose
from dfine_cli.errors import EXIT_DATA, DataError, UsageError

app = typer.Typer(no_args_is_help=True)


@app.callback()
def group(verbose: Verbose = False) -> None:
    """-v/--verbose is accepted here too, between the group and its command."""



def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the OS does not say)."""
    try:  # Linux: the high-water mark of this process image only
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def _print_pairs(title: str, pairs: dict[str, Any]) -> None:
    print_table(title, ["item", "value"], [[k, v] for k, v in pairs.items()])


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- Objects365


@app.command("remap-obj365")
@handle_errors
def remap_obj365(
    base_dir: Annotated[
        Path, typer.Option("--base-dir", help="Objects365 root holding train/ and val/.")
    ],
    new_val_size: Annotated[
        int, typer.Option(help="Validation images kept (the first ones in JSON order).")
    ] = 5000,
    copy_images: Annotated[
        bool,
        typer.Option(
            "--copy-images/--no-copy-images", help="Copy moved images to train/images_from_val/."
        ),
    ] = True,
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Keep the first N validation images as validation; move the rest into training.

    Writes val/new_zhiyuan_objv2_val.json and train/new_zhiyuan_objv2_train.json (official
    rules) and copies the moved images. Safe to interrupt and rerun.
    """
    from dfine_cli.data.obj365.remap import remap_obj365 as run

    summary = run(base_dir, new_val_size=new_val_size, copy_images=copy_images, track=track)
    payload = {**asdict(summary), "peak_rss_mb": _peak_rss_mb()}
    if json_output:
        print_json({"command": "data remap-obj365", **payload})
    else:
        _print_pairs("remap-obj365", payload)


@app.command("resize-obj365")
@handle_errors
def resize_obj365(
    base_dir: Annotated[
        Path, typer.Option("--base-dir", help="Objects365 root holding train/ and val/.")
    ],
    max_size: Annotated[
        int, typer.Option(help="Longest image side after resizing, in pixels.")
    ] = 640,
    workers: Annotated[
        int, typer.Option(help="Worker processes (default: CPU count, at most 8).")
    ] = _default_workers(),
    split: Annotated[
        list[str] | None,
        typer.Option("--split", help="Split to resize (repeatable; default: train and val)."),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad", help="Leave failed images (and their boxes) out instead of failing."
        ),
    ] = False,
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Shrink images longer than --max-size and write new_zhiyuan_objv2_{split}_resized.json.

    Originals are never modified; resized copies are saved as *_resized.jpg. Safe to interrupt
    and rerun: finished images are skipped. Exits 3 listing the failed images unless --skip-bad.
    """
    from dfine_cli.data.obj365.resize import resize_obj365 as run

    summaries = run(
        base_dir,
        splits=split or ("train", "val"),
        max_size=max_size,
        workers=workers,
        skip_bad=skip_bad,
        track=track,
    )
    failed = [s for s in summaries if not s.written]
    if json_output:
        print_json(
            {
                "command": "data resize-obj365",
                "ok": not failed,
                "splits": [asdict(s) for s in summaries],
            }
        )
    else:
        rows = [
            [
                s.output_json if s.written else "(not written)",
                s.images,
                s.resized,
                s.reused,
                s.unchanged,
                s.annotations,
                len(s.failures),
            ]
            for s in summaries
        ]
        print_table(
            "resize-obj365",
            ["output", "images", "resized", "reused", "unchanged", "boxes", "failed"],
            rows,
        )
        for s in summaries:
            for failure in s.failures[:20]:
                _stderr(f"failed: {failure.file_name}: {failure.reason}")
            if len(s.failures) > 20:
                _stderr(
                    f"... and {len(s.failures) - 20} more failures in {s.source_json} (see --json)"
                )
    if failed:
        count = sum(len(s.failures) for s in failed)
        raise DataError(
            f"{count} image(s) failed, no resized JSON written for them; fix or rerun with --skip-bad"
        )


# --------------------------------------------------------------------------- conversion


class SourceFormat(str, Enum):
    yolo = "yolo"
    voc = "voc"


@app.command("convert")
@handle_errors
def convert(
    source: Annotated[
        Path,
        typer.Argument(metavar="SOURCE",
                       help="YOLO data.yaml or dataset folder; VOC root or folder of XML files."),
    ],
    source_format: Annotated[
        SourceFormat, typer.Option("--from", help="Source annotation format.")
    ],
    out_dir: Annotated[
        Path | None,
        typer.Argument(metavar="OUT_DIR",
                       help="--from yolo with a data.yaml: folder for every split's COCO JSON and a "
                       "data.yaml that 'dfine train --data' takes as is."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="COCO JSON file to write (one split).")] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Image folder (file_name is relative to it).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="YOLO: data.yaml entry or images/<split> (default train); VOC: ImageSets/Main/<split>.txt."
        ),
    ] = None,
    names: Annotated[
        str | None,
        typer.Option(help="Class names in id order: 'a,b,c' or a file with one name per line."),
    ] = None,
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Convert YOLO txt or Pascal VOC XML labels to COCO JSON (category ids from 1).

    'dfine data convert --from yolo DATA.yaml OUT/' converts every split of an Ultralytics
    data.yaml in one call; --out FILE.json converts one split.
    """
    from dfine_cli.data.convert import CONVERTERS, parse_names

    if (out is None) == (out_dir is None):
        raise UsageError("give either OUT/ (every split of a YOLO data.yaml) or --out FILE.json (one split)")
    if out_dir is not None:
        _convert_yolo_dataset(source, out_dir, source_format, (images, split, names), json_output)
        return
    assert out is not None
    converter = CONVERTERS[source_format.value]
    kwargs: dict[str, Any] = {"images_dir": images, "names": parse_names(names)}
    if split is not None or source_format is SourceFormat.voc:
        kwargs["split"] = split
    summary = converter(source, out, **kwargs)
    if json_output:
        print_json({"command": "data convert", **asdict(summary)})
        return
    _print_pairs(
        f"convert {source_format.value} → COCO",
        {
            "output": summary.output,
            "images folder": summary.images_dir,
            "images": summary.images,
            "boxes": summary.annotations,
            "negative images": summary.negatives,
            "classes": ", ".join(f"{i}:{n}" for i, n in enumerate(summary.categories, start=1)),
            **{f"skipped: {reason}": count for reason, count in summary.skipped.items()},
            **{f"note: {note}": count for note, count in summary.notes.items()},
        },
    )


def _convert_yolo_dataset(source: Path, out_dir: Path, source_format: SourceFormat,
                          single_split_options: tuple[Any, ...], json_output: bool) -> None:
    from dfine_cli.data.yolo import convert_yolo_dataset

    if source_format is not SourceFormat.yolo or source.suffix.lower() not in (".yaml", ".yml"):
        raise UsageError("OUT/ converts the splits of a YOLO data.yaml (--from yolo DATA.yaml OUT/); "
                         "use --out FILE.json for anything else")
    if any(v is not None for v in single_split_options):
        raise UsageError("--images, --split and --names apply to --out FILE.json; a data.yaml names its "
                         "splits and classes itself")
    result = convert_yolo_dataset(source, out_dir)
    if json_output:
        print_json({"command": "data convert", "dataset_yaml": result.dataset_yaml,
                    "splits": {k: asdict(v) for k, v in result.splits.items()}})
    else:
        print_table(f"convert yolo → COCO ({result.dataset_yaml})",
                    ["split", "output", "images folder", "images", "boxes", "negative images", "skipped"],
                    [[split, s.output, s.images_dir, s.images, s.annotations, s.negatives, sum(s.skipped.values())]
                     for split, s in result.splits.items()])
    _stderr(f"train on it with: dfine train --data {result.dataset_yaml}")
    report_saved(out_dir)


# --------------------------------------------------------------------------- checks


DataArgument = Annotated[
    Path, typer.Argument(metavar="DATA", help="Dataset folder, dataset YAML, or a COCO .json (with --images).")
]
SplitOption = Annotated[
    str | None, typer.Option(help="Only this split (default: every split found).")
]
ImagesOption = Annotated[Path | None, typer.Option(help="Image folder when DATA is a .json file.")]


@app.command("validate")
@handle_errors
def validate(
    data: DataArgument,
    split: SplitOption = None,
    images: ImagesOption = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="Read image headers only (skips decoding).")
    ] = False,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = _default_workers(),
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Check a COCO dataset before training; exit 3 on errors, 0 with warnings only.

    Checks: missing/unreadable images, sizes that disagree with the JSON, malformed or
    duplicate ids, unknown image/category ids, zero-area boxes, boxes outside the image,
    empty categories.
    """
    from dfine_cli.data.validate import dataset_splits, validate_split

    reports = [
        (name, validate_split(s, decode=not fast, workers=workers, track=track))
        for name, s in dataset_splits(data, split, images)
    ]
    ok = all(r.ok for _, r in reports)
    if json_output:
        print_json(
            {
                "command": "data validate",
                "ok": ok,
                "errors": sum(r.errors for _, r in reports),
                "warnings": sum(r.warnings for _, r in reports),
                "splits": [
                    {
                        "split": name,
                        **{k: v for k, v in asdict(r).items() if k != "issues"},
                        "errors": r.errors,
                        "warnings": r.warnings,
                        "issues": [{**asdict(i), "description": i.description} for i in r.issues],
                    }
                    for name, r in reports
                ],
            }
        )
    else:
        rows: list[list[Any]] = []
        for name, r in reports:
            rows.append(
                [
                    name,
                    "summary",
                    "-",
                    f"{r.images} images, {r.boxes} boxes, {r.categories} categories",
                    "",
                ]
            )
            for issue in r.issues:
                rows.append(
                    [
                        name,
                        issue.check,
                        issue.severity,
                        issue.count,
                        issue.examples[0] if issue.examples else "",
                    ]
                )
        print_table("validate", ["split", "check", "severity", "count", "example"], rows)
        for name, r in reports:
            verdict = "OK" if r.ok and not r.warnings else "OK with warnings" if r.ok else "FAILED"
            _stderr(f"{name}: {verdict} ({r.errors} errors, {r.warnings} warnings)")
    if not ok:
        raise typer.Exit(EXIT_DATA)


@app.command("stats")
@handle_errors
def stats(
    data: DataArgument,
    split: SplitOption = None,
    images: ImagesOption = None,
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Images, boxes, boxes per class, image and box size distributions."""
    from dfine_cli.data.validate import dataset_splits, split_stats

    results = [(name, split_stats(s)) for name, s in dataset_splits(data, split, images)]
    if json_output:
        print_json(
            {"command": "data stats", "splits": [{"split": n, **asdict(s)} for n, s in results]}
        )
        return
    for name, s in results:
        q = s.box_side_quantiles
        _print_pairs(
            f"{name}: summary",
            {
                "images": s.images,
                "boxes": s.boxes,
                "negative images": s.negatives,
                "boxes per image (mean / max)": f"{s.boxes_per_image_mean:.2f} / {s.boxes_per_image_max}",
                "boxes small / medium / large": "{small} / {medium} / {large}".format(
                    **s.box_sizes
                ),
                "box side px (min p25 p50 p75 max)": " ".join(
                    f"{q[k]:.1f}" for k in ("min", "p25", "p50", "p75", "max")
                ),
                "image sizes": ", ".join(f"{size} ×{count}" for size, count in s.image_sizes),
            },
        )
        print_table(
            f"{name}: classes",
            ["id", "name", "boxes", "images"],
            [[c.id, c.name, c.boxes, c.images] for c in s.classes],
        )


# --------------------------------------------------------------------------- synthetic data


@app.command("synth")
@handle_errors
def synth(
    out: Annotated[
        Path,
        typer.Argument(metavar="OUT", help="Output folder (images/{train,val}, annotations/instances_*.json)."),
    ],
    images: Annotated[
        int, typer.Option("--images", help="Number of images (80% train, 20% val).")
    ] = 200,
    classes: Annotated[int, typer.Option("--classes", help="Number of shape classes (1–6).")] = 3,
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed writes identical files.")
    ] = 0,
    img_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 320,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a non-empty folder.")
    ] = False,
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Write a small deterministic COCO dataset of coloured shapes (for demos and smoke tests)."""
    from dfine_cli.data.synth import make_synthetic_dataset

    summary = make_synthetic_dataset(
        out, num_images=images, num_classes=classes, seed=seed, img_size=img_size,
        overwrite=overwrite,
    )
    payload = {
        **asdict(summary),
        "train_annotations": summary.annotations("train"),
        "val_annotations": summary.annotations("val"),
    }
    if json_output:
        print_json({"command": "data synth", **payload})
    else:
        _print_pairs("synth", {**payload, "class_names": ", ".join(summary.class_names)})
