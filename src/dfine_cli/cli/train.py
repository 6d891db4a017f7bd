"""``dfine train``: the D-FINE / DEIM recipes on a COCO-format dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dfine_cli.cli._common import handle_errors, is_verbose, print_json, report_saved, track
from dfine_cli.cli.options import Json, Verbose, output_option, parse_device_option
from dfine_cli.devices import DEVICE_OPTION_HELP
from dfine_cli.engine.config import TrainConfig
from dfine_cli.engine.stages import STAGE2_MODES
from dfine_cli.models.presets import SIZES, VARIANTS

Size = Enum("Size", {name: name for name in SIZES}, type=str)  # type: ignore[misc]
Stage2Choice = Enum("Stage2Choice", {name: name for name in STAGE2_MODES}, type=str)  # type: ignore[misc]
RecipeChoice = Enum("RecipeChoice", {name: name for name in VARIANTS}, type=str)  # type: ignore[misc]


def _setting(*names: str, help: str, default: str | None = None, **kwargs: Any) -> Any:
    """A train option: ``None`` unless given, so a --config or --set value is not overridden.

    --help shows ``default``, or else the :class:`TrainConfig` default of the setting the
    option is named after (``on``/``off`` for switches).
    """
    if default is None:
        value = getattr(TrainConfig, names[0].split("/")[0].removeprefix("--").replace("-", "_"), None)
        if value is not None:
            default = ("on" if value else "off") if isinstance(value, bool) else str(value)
    return typer.Option(*names, help=help, show_default=default or False, **kwargs)


@handle_errors
def train(
    data: Annotated[Path | None, _setting("--data", help="Dataset folder (images/{train,val}, annotations/instances_{train,val}.json) or a dataset YAML.")] = None,
    model: Annotated[Size | None, _setting("--model", help="Model size.")] = None,
    recipe: Annotated[RecipeChoice | None, _setting("--recipe", help="Training recipe.")] = None,
    epochs: Annotated[int | None, _setting("--epochs", help="Epochs; milestones scale with it.", default="the recipe's", min=1)] = None,
    batch_size: Annotated[int | None, _setting("--batch-size", help="Total batch size across processes.", min=1)] = None,
    img_size: Annotated[int | None, _setting("--img-size", help="Training/eval input side in pixels, a positive multiple of 32.")] = None,
    lr_scale: Annotated[float | None, _setting("--lr-scale", help="Multiply every learning rate.")] = None,
    workers: Annotated[int | None, _setting("--workers", help="Data-loading worker processes.", min=0)] = None,
    device: Annotated[str | None, _setting("--device", help=DEVICE_OPTION_HELP, callback=parse_device_option)] = None,
    amp: Annotated[bool | None, _setting("--amp/--no-amp", help="Mixed precision (bf16 on CPU, fp16+GradScaler on CUDA).")] = None,
    ema: Annotated[bool | None, _setting("--ema/--no-ema", help="Keep an EMA model; it is evaluated and saved.")] = None,
    pretrained: Annotated[bool | None, _setting("--pretrained/--no-pretrained", help="Start the backbone from ImageNet HGNetv2 weights, downloaded once (not with --tune/--resume).")] = None,
    tune: Annotated[Path | None, _setting("--tune", help="Start from this checkpoint: a file, or a name from 'dfine weights list' (e.g. dfine-s-obj365).")] = None,
    class_map: Annotated[str | None, _setting("--class-map", help="With --tune: dataset classes that start from a checkpoint class of another name, e.g. 'car=Car,person=Person' (same names match by themselves).")] = None,
    resume: Annotated[str | None, _setting("--resume", help="Continue a run: a run folder, a last.pth, or 'auto'.")] = None,
    patience: Annotated[int | None, _setting("--patience", help="Stop after this many evaluations without improvement.", default="off", min=1)] = None,
    output: Annotated[Path | None, output_option("Run folder", "runs/train/exp{N}")] = None,
    name: Annotated[str | None, _setting("--name", help="Run name under runs/train/ (numbered name2, name3... if taken).")] = None,
    exist_ok: Annotated[bool | None, _setting("--exist-ok", help="Start a new run in an --output (or runs/train/<name>) folder that holds files, replacing them.")] = None,
    seed: Annotated[int | None, _setting("--seed", help="Random seed.")] = None,
    eval_every: Annotated[int | None, _setting("--eval-every", help="Evaluate every N epochs.", min=1)] = None,
    freeze_backbone: Annotated[bool | None, _setting("--freeze-backbone/--no-freeze-backbone", help="Freeze the backbone's weights.")] = None,
    stage2: Annotated[Stage2Choice | None, _setting("--stage2", help="Stage 2 (the epochs without augmentation): 'best' goes back to the best stage-1 epoch by val mAP at its start and after every epoch that does not improve, as the official recipes do; 'continue' trains straight on.")] = None,
    tensorboard: Annotated[bool | None, _setting("--tensorboard/--no-tensorboard", help="Also log loss and learning rate every step, and every epoch's metrics, for TensorBoard in <run>/tensorboard (needs: pip install 'dfine[tensorboard]').")] = None,
    compile_: Annotated[bool | None, _setting("--compile/--no-compile", help="Run the model through torch.compile (cpu needs a C++ compiler, cuda needs triton; minutes of compilation before the first step).")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", min=1, help="Worker processes on this machine (torchrun launcher).")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines in the job.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This machine's rank (0..nnodes-1).")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option("--rdzv-endpoint", help="host:port of node 0's rendezvous (multi-node).")] = None,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Alias: node 0's address (with --master-port).")] = None,
    master_port: Annotated[int, typer.Option("--master-port", help="Port with --master-addr.")] = 29500,
    dist_backend: Annotated[str | None, typer.Option("--dist-backend", help="nccl or gloo.", show_default="nccl on CUDA, gloo on CPU")] = None,
    dist_timeout: Annotated[float, typer.Option("--dist-timeout", min=1.0, help="Seconds before a stuck collective (dead peer) fails the run.")] = 1800.0,
    rdzv_timeout: Annotated[float, typer.Option("--rdzv-timeout", min=1.0, help="Seconds for every node to join the rendezvous (multi-node) before the run fails.")] = 900.0,
    max_restarts: Annotated[int, typer.Option("--max-restarts", min=0, help="Restart all workers this many times after a failure; they resume from last.pth.")] = 0,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file with any of these settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: key=value (repeatable).")] = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Train D-FINE (or DEIM) on a COCO-format dataset; writes runs/train/<name>.

    Checkpoints (last.pth, best.pth by EMA mAP 50:95) are written atomically and can be
    resumed exactly with --resume. Settings: flags > --set > --config > recipe defaults.
    """
    from dfine_cli.engine.distributed import LaunchOptions
    from dfine_cli.engine.launch import run_training

    given = {
        "data": data, "model": model, "recipe": recipe, "epochs": epochs, "batch_size": batch_size,
        "img_size": img_size, "lr_scale": lr_scale, "workers": workers, "device": device,
        "amp": amp, "ema": ema, "tune": tune, "resume": resume, "patience": patience,
        "pretrained": pretrained, "class_map": class_map, "output": output, "name": name,
        "exist_ok": exist_ok, "seed": seed, "eval_every": eval_every,
        "freeze_backbone": freeze_backbone, "stage2": stage2, "tensorboard": tensorboard,
        "compile": compile_,
    }
    flags = {k: v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v
             for k, v in given.items() if v is not None}
    endpoint = rdzv_endpoint or (f"{master_addr}:{master_port}" if master_addr else None)
    launch = LaunchOptions(nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                           rdzv_endpoint=endpoint, backend=dist_backend, timeout_s=dist_timeout,
                           max_restarts=max_restarts, rdzv_timeout_s=rdzv_timeout)
    summary = run_training(flags, config, set_ or [], launch=launch, progress=track,
                           verbose=is_verbose())
    if summary is None:  # a worker of an external torchrun other than rank 0
        return
    if json_out:
        print_json({"command": "train", **summary})
    else:
        typer.echo(f"best mAP50:95 {summary['best_metric']:.4f} at epoch {summary['best_epoch']} "
                   f"-> {summary['run_dir']}")
    report_saved(summary["run_dir"])
