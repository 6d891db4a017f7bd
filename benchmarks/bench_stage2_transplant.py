"""Stage 2 of the official implementation, started from dfine's best stage-1 state.

For each dfine run folder of the learning benchmark (``bench_learning.py``: BCCD, D-FINE-N,
320, batch 8, 12 epochs, stage 2 = the last epoch), this converts ``best_stg1.pth`` (weights,
EMA with its update count, AdamW moments matched by parameter name) into the official solver's
state, then runs the official solver from there: it evaluates the loaded EMA, reloads the same
state as its ``best_stg1.pth`` at ``stop_epoch``, trains the one stage-2 epoch and evaluates
again. It prints the val mAP50:95 / mAP50 before and after, next to what dfine's own stage 2
reached from the same state. Together with the opposite transplant (official stage-1 states
into dfine's stage 2, docs/bench.md) it tells whether a difference in the stage-2 gain comes
from stage 2 or from the stage-1 state.

    python benchmarks/bench_stage2_transplant.py --official <D-FINE checkout> \\
        --work-dir runs/bench_learning runs/bench_learning/dfine_n_no-pretrained_e12_s3

The official run uses its custom-dataset N configuration with the protocol's changes (the
paths, 3 classes with category ids 0..2, 320 px, batch 8, 12 epochs, ``stop_epoch`` 11,
warm-up 25 steps, no pretrained backbone, AMP off, no DataLoader workers) and the dfine run's
seed. The checkout is only read; everything is written under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_repo import official_package

from dfine_cli.checkpoints import read_checkpoint


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def zero_based_copy(src: Path, dst: Path) -> int:
    """Write the COCO file with category ids shifted to 0..K-1 (the official labels are the
    ids); returns K."""
    data = json.loads(src.read_text())
    low = min(c["id"] for c in data["categories"])
    for cat in data["categories"]:
        cat["id"] -= low
    for ann in data["annotations"]:
        ann["category_id"] -= low
    dst.write_text(json.dumps(data))
    return len(data["categories"])


def write_config(official: Path, out: Path, images: Path, num_classes: int) -> Path:
    """The official custom N configuration with the protocol's changes."""
    size = [320, 320]
    train_ops = [
        {"type": "RandomPhotometricDistort", "p": 0.5}, {"type": "RandomZoomOut", "fill": 0},
        {"type": "RandomIoUCrop", "p": 0.8}, {"type": "SanitizeBoundingBoxes", "min_size": 1},
        {"type": "RandomHorizontalFlip"}, {"type": "Resize", "size": size},
        {"type": "SanitizeBoundingBoxes", "min_size": 1},
        {"type": "ConvertPILImage", "dtype": "float32", "scale": True},
        {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True},
    ]
    config = {
        "__include__": [str(official / "configs/dfine/custom/dfine_hgnetv2_n_custom.yml")],
        "output_dir": str(out), "num_classes": num_classes, "remap_mscoco_category": False,
        "use_amp": False, "eval_spatial_size": size, "epochs": 12, "print_freq": 5,
        "checkpoint_freq": 100, "HGNetv2": {"pretrained": False},
        "lr_warmup_scheduler": {"type": "LinearWarmup", "warmup_duration": 25},
        "train_dataloader": {
            "total_batch_size": 8, "num_workers": 0,
            "dataset": {"img_folder": str(images), "ann_file": str(out / "train.json"),
                        "transforms": {"ops": train_ops, "policy": {"epoch": 11}}},
            "collate_fn": {"base_size": 320, "stop_epoch": 11},
        },
        "val_dataloader": {
            "total_batch_size": 8, "num_workers": 0,
            "dataset": {"img_folder": str(images), "ann_file": str(out / "val.json"),
                        "transforms": {"ops": [{"type": "Resize", "size": size},
                                               {"type": "ConvertPILImage", "dtype": "float32",
                                                "scale": True}]}},
        },
    }
    path = out / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def convert(src: Any, config: Path, stage1_best: Path, out: Path) -> None:
    """Write ``out/best_stg1.pth`` and ``out/resume.pth``: dfine's stage-1 state in the
    official solver's format, resuming at the stage-2 epoch."""
    solver = _solver(src, config)
    solver.train()
    training = read_checkpoint(stage1_best).training or {}
    own = solver.model.state_dict()
    theirs = training["model"]
    # keys the official model holds and dfine recomputes (anchors, aliases, constants)
    solver.model.load_state_dict({k: theirs[k].to(v.dtype) if k in theirs else v for k, v in own.items()})
    ema_own = solver.ema.module.state_dict()
    ema = training["ema"]
    solver.ema.module.load_state_dict(
        {k: ema["module"][k].to(v.dtype) if k in ema["module"] else v for k, v in ema_own.items()})
    solver.ema.updates = int(ema["updates"])
    saved = training["optimizer"]
    names = [n for group in training["optimizer_param_names"] for n in group]
    indices = [i for group in saved["param_groups"] for i in group["params"]]
    moments = {name: saved["state"][i] for i, name in zip(indices, names) if i in saved["state"]}
    by_id = {id(p): n for n, p in solver.model.named_parameters()}
    state = solver.optimizer.state_dict()
    params = [p for group in solver.optimizer.param_groups for p in group["params"]]
    state["state"] = {i: {"step": moments[by_id[id(p)]]["step"].detach().float().reshape(()),
                          "exp_avg": moments[by_id[id(p)]]["exp_avg"].clone(),
                          "exp_avg_sq": moments[by_id[id(p)]]["exp_avg_sq"].clone()}
                      for i, p in enumerate(params)}
    solver.optimizer.load_state_dict(state)
    warmup = solver.lr_warmup_scheduler
    while not warmup.finished():
        warmup.step()
    for group, lr in zip(solver.optimizer.param_groups, warmup.warmup_end_values):
        group["lr"] = lr  # the warm-up ended long before stage 2
    solver.last_epoch = 10  # the next epoch is stop_epoch (11, 0-based)
    payload = solver.state_dict()
    torch.save(payload, out / "best_stg1.pth")
    torch.save(payload, out / "resume.pth")


def _solver(src: Any, config: Path, **overrides: Any) -> Any:
    return src.solver.TASKS["detection"](src.core.YAMLConfig(str(config), device="cpu", **overrides))


def run_stage2(src: Any, config: Path, out: Path, seed: int) -> list[float]:
    """Run the official solver from ``out/resume.pth``; returns the final [AP, AP50, ...]."""
    src.misc.dist_utils.setup_seed(seed)
    solver = _solver(src, config, resume=str(out / "resume.pth"))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        solver.fit()
    (out / "official_stdout.txt").write_text(printed.getvalue())
    rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line.strip()]
    return [float(v) for v in rows[-1]["test_coco_eval_bbox"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="dfine run folders with best_stg1.pth")
    parser.add_argument("--official", type=Path, required=True, help="official D-FINE checkout")
    parser.add_argument("--work-dir", type=Path, required=True,
                        help="bench_learning.py's work dir (train.json, val.json)")
    parser.add_argument("--images", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/bccd/BCCD/JPEGImages")
    parser.add_argument("--out", type=Path, default=Path("runs/stage2_transplant"))
    args = parser.parse_args()
    needed = [args.official / "src" / "solver", args.work_dir / "train.json", args.work_dir / "val.json"]
    needed += [run / name for run in args.runs for name in ("best_stg1.pth", "metrics.json", "config.yaml")]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        log(f"error: missing {', '.join(missing)} (an official checkout, bench_learning.py's work dir "
            "and finished D-FINE runs with a stage 2 are needed)")
        return 3
    pkg = official_package(args.official)
    for name in ("src.misc.dist_utils", "src.solver"):  # the seeding helper, the solvers
        importlib.import_module(name)

    print("run\tseed\tstage-1 best (dfine eval)\tdfine stage 2\tofficial stage 2 (AP, AP50)")
    for run in args.runs:
        history = json.loads((run / "metrics.json").read_text())["epochs"]
        seed = int(yaml.safe_load((run / "config.yaml").read_text())["seed"])
        stage1 = [e for e in history if e.get("stage", 1) == 1 and "val_AP" in e]
        best = max(stage1, key=lambda e: e["val_AP"])
        final = history[-1]
        out = (args.out / run.name).resolve()
        out.mkdir(parents=True, exist_ok=True)
        categories = zero_based_copy(args.work_dir / "train.json", out / "train.json")
        zero_based_copy(args.work_dir / "val.json", out / "val.json")
        config = write_config(args.official.resolve(), out, args.images.resolve(), categories)
        (out / "log.txt").unlink(missing_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # the official solver's prints are logs
            convert(pkg, config, run / "best_stg1.pth", out)
        log(f"{run.name}: stage-1 state of epoch {best['epoch']} converted; official stage 2 running")
        stats = run_stage2(pkg, config, out, seed)
        print(f"{run.name}\t{seed}\t{best['val_AP']:.3f} / {best['val_AP50']:.3f}"
              f"\t{final['val_AP']:.3f} / {final['val_AP50']:.3f}\t{stats[0]:.3f} / {stats[1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
