"""`dfine train`: the D-FINE / DEIM recipes on a COCO-format dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from dfine_cli.cli._common import handle_errors, print_json, track


class Size(str, Enum):
    n = "n"
    s = "s"
    m = "m"
    l = "l"  # noqa: E741
    x = "x"


class RecipeChoice(str, Enum):
    dfine = "dfine"
    deim = "deim"


def train(
    data: str = typer.Option(None, "--data", help="Dataset folder (images/{train,val}, annotations/instances_{train,val}.json) or a dataset YAML."),
    model: Size = typer.Option(None, "--model", help="Model size [default: n]."),
    recipe: RecipeChoice = typer.Option(None, help="Training recipe [default: dfine]."),
    epochs: int = typer.Option(None, min=1, help="Epochs [default: the recipe's; milestones scale with it]."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Total batch size across processes [default: 4]."),
    img_size: int = typer.Option(None, "--img-size", help="Training/eval size, multiple of 32 [default: 640]."),
    lr_scale: float = typer.Option(None, "--lr-scale", help="Multiply every learning rate [default: 1]."),
    workers: int = typer.Option(None, min=0, help="Data-loading worker processes [default: 2]."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:N or auto [default: auto]."),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="Mixed precision (bf16 on CPU, fp16+GradScaler on CUDA) [default: off]."),
    ema: bool = typer.Option(None, "--ema/--no-ema", help="Keep an EMA model; it is evaluated and saved [default: on]."),
    tune: Path = typer.Option(None, help="Start from this checkpoint (any supported format)."),
    resume: str = typer.Option(None, help="Continue a run: a run folder, a last.pth, or 'auto'."),
    patience: int = typer.Option(None, min=1, help="Stop after this many evaluations without improvement."),
    output: Path = typer.Option(None, help="Run folder [default: runs/train/exp{N}]."),
    name: str = typer.Option(None, help="Run name under runs/train/."),
    seed: int = typer.Option(None, help="Random seed [default: 0]."),
    eval_every: int = typer.Option(None, "--eval-every", min=1, help="Evaluate every N epochs [default: 1]."),
    freeze_backbone: bool = typer.Option(None, "--freeze-backbone/--no-freeze-backbone", help="Freeze the backbone's weights."),
    config: Path = typer.Option(None, "--config", help="YAML file with any of these settings."),
    set_: list[str] = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Train D-FINE (or DEIM) on a COCO-format dataset; writes runs/train/<name>.

    Checkpoints (last.pth, best.pth by EMA mAP 50:95) are written atomically and can be
    resumed exactly with --resume. Settings: flags > --set > --config > recipe defaults.
    """
    given = {
        "data": data, "model": model.value if model else None, "recipe": recipe.value if recipe else None,
        "epochs": epochs, "batch_size": batch_size, "img_size": img_size, "lr_scale": lr_scale,
        "workers": workers, "device": device, "amp": amp, "ema": ema,
        "tune": str(tune) if tune else None, "resume": resume, "patience": patience,
        "output": str(output) if output else None, "name": name, "seed": seed,
        "eval_every": eval_every, "freeze_backbone": freeze_backbone,
    }
    handle_errors(_train)({k: v for k, v in given.items() if v is not None}, config, set_ or [], json_out)


def build_config(flags: dict[str, Any], config: Path | None, sets: list[str]) -> Any:
    from dfine_cli.engine.config import TrainConfig, load_config_file, merge, parse_set, validate

    cfg = TrainConfig()
    if config is not None:
        cfg = merge(cfg, load_config_file(config), f"config file {config}")
    cfg = merge(cfg, parse_set(sets), "--set")
    cfg = merge(cfg, flags, "flag")
    return cfg if cfg.resume else validate(cfg)


def _train(flags: dict[str, Any], config: Path | None, sets: list[str], json_out: bool) -> None:
    from dfine_cli.engine.trainer import train as run_train

    cfg = build_config(flags, config, sets)
    result = run_train(cfg, progress=lambda it, desc, total: track(it, desc, total))
    summary = {
        "command": "train", "run_dir": str(result.run_dir), "epochs_run": result.epochs_run,
        "best_metric": result.best_metric, "best_epoch": result.best_epoch,
        "last_checkpoint": str(result.last_checkpoint),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "stopped_early": result.stopped_early, "skipped_steps": result.skipped_steps,
    }
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"best mAP50:95 {result.best_metric:.4f} at epoch {result.best_epoch} -> {result.run_dir}")
