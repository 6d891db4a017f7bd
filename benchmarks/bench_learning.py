"""Learning benchmark: the BCCD protocol over several seeds, per-epoch and final val mAP.

The protocol (the one the official implementation was compared on): BCCD's official splits
(205 train / 87 val images, 3 classes) converted from Pascal VOC with ``dfine data convert``,
D-FINE-N, 320x320, total batch 8, 12 epochs, CPU, AMP off. Each (recipe, seed) is one
``dfine train`` process, so runs never share state. Extra ``dfine train`` options go after
``--`` (e.g. ``-- --stage2 continue`` or ``-- --pretrained``).

    python benchmarks/bench_learning.py --recipes dfine deim --seeds 0 1 2 --out learning.json
    python benchmarks/bench_learning.py --seeds 0 --epochs 2          # a quick smoke run

``--unused-class`` adds a category that never occurs (id 0, ``background``) to both splits, so
the model carries one class more than the data uses. That is the official run's configuration:
its category ids are 1-3 and the official code needs ``num_classes`` 4 for them.

Prints one line per epoch while it runs (stderr), then a table per recipe (stdout): the
per-epoch val mAP50:95 of each seed, the final mAP50:95 and mAP50, and their mean, standard
deviation and range over seeds. ``--out`` writes everything as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dfine_cli.data.cocofile import load_coco
from dfine_cli.errors import DataError, DfineError
from dfine_cli.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BCCD = ROOT.parent / "shared" / "data" / "bccd" / "BCCD"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


UNUSED_CATEGORY = {"id": 0, "name": "background", "supercategory": "none"}


def with_unused_class(coco: dict[str, Any]) -> dict[str, Any]:
    """A copy of a COCO dict with ``UNUSED_CATEGORY`` first; images and annotations unchanged.

    dfine orders classes by category id, so the new category becomes class 0 and every real
    class moves up by one, as the official code's labels do when it is given ids 1..N.
    """
    if any(int(c["id"]) == UNUSED_CATEGORY["id"] for c in coco["categories"]):
        raise ValueError(f"category id {UNUSED_CATEGORY['id']} is already used")
    return {**coco, "categories": [dict(UNUSED_CATEGORY), *coco["categories"]]}


def prepare_bccd(voc_root: Path, work: Path, *, unused_class: bool = False) -> Path:
    """Convert BCCD's train and val splits to COCO JSON once; returns the dataset YAML."""
    suffix = "_unused0" if unused_class else ""
    spec = work / f"bccd{suffix}.yaml"
    if spec.is_file():
        return spec
    for split in ("train", "val"):
        out = work / f"{split}.json"
        if not out.is_file():
            subprocess.run([sys.executable, "-m", "dfine_cli", "data", "convert", str(voc_root),
                            "--from", "voc", "--split", split, "--out", str(out),
                            "--images", str(voc_root / "JPEGImages")],
                           check=True, stdout=subprocess.DEVNULL)
        if unused_class:
            try:
                coco = with_unused_class(load_coco(out))
            except ValueError as exc:
                raise DataError(f"{out}: {exc}") from None
            write_json(work / f"{split}{suffix}.json", coco, indent=None)
    write_json(spec, {split: {"images": str(voc_root / "JPEGImages"),
                              "annotations": str(work / f"{split}{suffix}.json")}
                      for split in ("train", "val")}, indent=None)
    return spec


def train_once(spec: Path, recipe: str, seed: int, args: argparse.Namespace, extra: list[str],
               run_dir: Path) -> dict[str, Any]:
    """One ``dfine train`` run; returns its per-epoch validation curve and final metrics."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file() or not _finished(metrics_file, args.epochs):
        cmd = ["dfine", "train", "--data", str(spec), "--model", args.model, "--recipe", recipe,
               "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--seed", str(seed), "--workers", str(args.workers),
               "--device", "cpu", "--no-amp", *extra]
        if (run_dir / "last.pth").is_file():
            cmd = ["dfine", "train", "--resume", str(run_dir)]  # finish an interrupted run
        else:
            cmd += ["--output", str(run_dir)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        log(f"{recipe} seed {seed}: trained in {time.perf_counter() - t0:.0f} s")
    epochs = json.loads(metrics_file.read_text())["epochs"]
    curve = [float(e["val_AP"]) for e in epochs if "val_AP" in e]
    final = epochs[-1]
    return {"recipe": recipe, "seed": seed, "curve": curve,
            "final_AP": float(final.get("val_AP", float("nan"))),
            "final_AP50": float(final.get("val_AP50", float("nan"))),
            "best_AP": max(curve) if curve else float("nan"), "run_dir": str(run_dir)}


def _finished(metrics_file: Path, epochs: int) -> bool:
    rows = json.loads(metrics_file.read_text()).get("epochs", [])
    return bool(rows) and int(rows[-1].get("epoch", 0)) >= epochs


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def render(results: list[dict[str, Any]], recipes: list[str]) -> str:
    lines: list[str] = []
    for recipe in recipes:
        runs = [r for r in results if r["recipe"] == recipe]
        if not runs:
            continue
        lines.append(f"recipe {recipe}")
        lines.append("seed\tper-epoch val mAP50:95\tfinal mAP50:95\tfinal mAP50")
        for r in runs:
            curve = " ".join(f"{v:.3f}" for v in r["curve"])
            lines.append(f"{r['seed']}\t{curve}\t{r['final_AP']:.3f}\t{r['final_AP50']:.3f}")
        ap = summarize([r["final_AP"] for r in runs])
        ap50 = summarize([r["final_AP50"] for r in runs])
        lines.append(f"mean\t\t{ap['mean']:.3f} ± {ap['std']:.3f} ({ap['min']:.3f}–{ap['max']:.3f})"
                     f"\t{ap50['mean']:.3f} ± {ap50['std']:.3f} ({ap50['min']:.3f}–{ap50['max']:.3f})")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voc-root", type=Path, default=DEFAULT_BCCD, help="BCCD VOC root")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_learning"),
                        help="converted data and one run folder per (recipe, seed); reruns reuse them")
    parser.add_argument("--recipes", nargs="+", default=["dfine"], choices=["dfine", "deim"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default="n", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--unused-class", action="store_true",
                        help="add a category that never occurs (id 0), as the official run's "
                             "num_classes 4 for ids 1-3 does")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not (args.voc_root / "JPEGImages").is_dir():
        log(f"error: BCCD not found at {args.voc_root} (pass --voc-root)")
        return 3
    if "--pretrained" not in extra and "--no-pretrained" not in extra:
        extra.append("--no-pretrained")  # the protocol starts from random initialisation
    args.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        spec = prepare_bccd(args.voc_root, args.work_dir, unused_class=args.unused_class)
    except subprocess.CalledProcessError as exc:  # dfine data convert printed why
        return exc.returncode
    except DataError as exc:  # a converted file in --work-dir is damaged
        log(f"error: {exc} (delete it to convert again)")
        return exc.exit_code
    except DfineError as exc:
        log(f"error: {exc}")
        return exc.exit_code
    tag = "-".join(a.lstrip("-").replace("=", "_") for a in extra) or "default"
    if args.unused_class:
        tag += "-unused0"
    results = []
    for recipe in args.recipes:
        for seed in args.seeds:
            run_dir = args.work_dir / f"{recipe}_{args.model}_{tag}_e{args.epochs}_s{seed}"
            try:
                results.append(train_once(spec, recipe, seed, args, extra, run_dir))
            except subprocess.CalledProcessError as exc:  # dfine train printed why
                log(f"error: {recipe} seed {seed} stopped (exit {exc.returncode}) in {run_dir}; "
                    "finished runs are kept and a rerun goes on from there")
                return exc.returncode
            curve = " ".join(f"{v:.3f}" for v in results[-1]["curve"])
            log(f"{recipe} seed {seed}: {curve}")
    sys.stdout.write(render(results, args.recipes) + "\n")
    if args.out:
        payload = {"schema_version": 1, "protocol": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()
                                                     if k not in ("out",)} | {"extra": extra},
                   "runs": results,
                   "summary": {rc: {"final_AP": summarize([r["final_AP"] for r in results if r["recipe"] == rc]),
                                    "final_AP50": summarize([r["final_AP50"] for r in results if r["recipe"] == rc])}
                               for rc in args.recipes if any(r["recipe"] == rc for r in results)}}
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
