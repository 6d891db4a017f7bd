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


class Stage2Choice(str, Enum):
    best = "best"
    continue_ = "continue"


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
    pretrained: bool = typer.Option(None, "--pretrained/--no-pretrained", help="Start the backbone from ImageNet HGNetv2 weights, downloaded once (not with --tune/--resume) [default: on]."),
    tune: Path = typer.Option(None, help="Start from this checkpoint: a file, or a name from 'dfine weights list' (e.g. dfine-s-obj365)."),
    class_map: str = typer.Option(None, "--class-map", help="With --tune: dataset classes that start from a checkpoint class of another name, e.g. 'car=Car,person=Person' (same names match by themselves)."),
    resume: str = typer.Option(None, help="Continue a run: a run folder, a last.pth, or 'auto'."),
    patience: int = typer.Option(None, min=1, help="Stop after this many evaluations without improvement."),
    output: Path = typer.Option(None, help="Run folder [default: runs/train/exp{N}]."),
    name: str = typer.Option(None, help="Run name under runs/train/ (numbered name2, name3... if taken)."),
    exist_ok: bool = typer.Option(None, "--exist-ok", help="Start a new run in an --output (or runs/train/<name>) folder that holds files, replacing them."),
    seed: int = typer.Option(None, help="Random seed [default: 0]."),
    eval_every: int = typer.Option(None, "--eval-every", min=1, help="Evaluate every N epochs [default: 1]."),
    freeze_backbone: bool = typer.Option(None, "--freeze-backbone/--no-freeze-backbone", help="Freeze the backbone's weights."),
    stage2: Stage2Choice = typer.Option(None, "--stage2", help="Stage 2 (the epochs without augmentation): 'best' goes back to the best stage-1 epoch by val mAP at its start and after every epoch that does not improve, as the official recipes do; 'continue' trains straight on [default: best]."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Worker processes on this machine (torchrun launcher)."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines in the job."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's rank (0..nnodes-1)."),
    rdzv_endpoint: str = typer.Option(None, "--rdzv-endpoint", help="host:port of node 0's rendezvous (multi-node)."),
    master_addr: str = typer.Option(None, "--master-addr", help="Alias: node 0's address (with --master-port)."),
    master_port: int = typer.Option(29500, "--master-port", help="Port with --master-addr."),
    dist_backend: str = typer.Option(None, "--dist-backend", help="nccl or gloo [default: nccl on CUDA, gloo on CPU]."),
    dist_timeout: float = typer.Option(1800.0, "--dist-timeout", min=1.0, help="Seconds before a stuck collective (dead peer) fails the run."),
    rdzv_timeout: float = typer.Option(900.0, "--rdzv-timeout", min=1.0, help="Seconds for every node to join the rendezvous (multi-node) before the run fails."),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help="Restart all workers this many times after a failure; they resume from last.pth."),
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
        "pretrained": pretrained, "class_map": class_map,
        "output": str(output) if output else None, "name": name, "exist_ok": exist_ok, "seed": seed,
        "eval_every": eval_every, "freeze_backbone": freeze_backbone,
        "stage2": stage2.value if stage2 else None,
    }
    from dfine_cli.engine.distributed import LaunchOptions

    endpoint = rdzv_endpoint or (f"{master_addr}:{master_port}" if master_addr else None)
    launch = LaunchOptions(nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                           rdzv_endpoint=endpoint, backend=dist_backend, timeout_s=dist_timeout,
                           max_restarts=max_restarts, rdzv_timeout_s=rdzv_timeout)
    handle_errors(_train)({k: v for k, v in given.items() if v is not None}, config, set_ or [],
                          json_out, launch)


def build_config(flags: dict[str, Any], config: Path | None, sets: list[str]) -> Any:
    from dfine_cli.engine.config import TrainConfig, load_config_file, merge, parse_set, validate

    cfg = TrainConfig()
    if config is not None:
        cfg = merge(cfg, load_config_file(config), f"config file {config}")
    cfg = merge(cfg, parse_set(sets), "--set")
    cfg = merge(cfg, flags, "flag")
    return validate(cfg)


def _train(flags: dict[str, Any], config: Path | None, sets: list[str], json_out: bool,
           launch: Any) -> None:
    from dfine_cli.cli._common import is_verbose
    from dfine_cli.engine import distributed
    from dfine_cli.engine.trainer import launch_training
    from dfine_cli.engine.trainer import train as run_train

    if isinstance(flags.get("class_map"), str):
        from dfine_cli.engine.finetune import parse_class_map

        flags = flags | {"class_map": parse_class_map(flags["class_map"])}
    cfg = build_config(flags, config, sets)
    external = distributed.env_world()
    processes = launch.nproc_per_node * launch.nnodes
    if external is not None and external[1] > 1:
        # Started by an external torchrun: this process is one worker.
        backend = launch.backend or distributed.default_backend(cfg.device)
        summary = distributed.run_worker(cfg.to_dict() | {"_verbose": is_verbose()}, backend, launch.timeout_s)
        if external[0] != 0:
            return
    elif processes > 1:
        summary = launch_training(cfg, launch, verbose=is_verbose())
    else:
        result = run_train(cfg, progress=lambda it, desc, total: track(it, desc, total))
        summary = {
            "run_dir": str(result.run_dir), "epochs_run": result.epochs_run,
            "best_metric": result.best_metric, "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early, "skipped_steps": result.skipped_steps,
        }
    run_dir = Path(summary["run_dir"])
    summary = {"command": "train", **summary, "processes": max(processes, external[1] if external else 1),
               "last_checkpoint": str(run_dir / "last.pth"),
               "best_checkpoint": str(run_dir / "best.pth") if (run_dir / "best.pth").exists() else None}
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"best mAP50:95 {summary['best_metric']:.4f} at epoch {summary['best_epoch']} -> {run_dir}")
