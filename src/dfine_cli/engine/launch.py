"""How a training run starts: one process, several processes launched from here, or one
worker of a job that an external ``torchrun`` started.

:func:`run_training` is ``dfine train`` without the command line: it merges the settings
(flags > ``--set`` > ``--config`` > recipe defaults), picks the way to run, and returns the
run's summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dfine_cli.engine.config import TrainConfig
from dfine_cli.engine.distributed import LaunchOptions
from dfine_cli.engine.throughput import last_epoch_throughput
from dfine_cli.progress import Progress


def build_config(flags: Mapping[str, Any], config: Path | None = None,
                 sets: Sequence[str] = ()) -> TrainConfig:
    """The validated settings: ``flags`` over ``--set key=value`` over the ``config`` file.

    ``flags`` holds only the settings given on the command line (keys of
    :class:`~dfine_cli.engine.config.TrainConfig`); ``class_map`` may be its text form
    (``'car=Car,person=Person'``).
    """
    from dfine_cli.engine.config import load_config_file, merge, parse_set, validate

    flags = dict(flags)
    if isinstance(flags.get("class_map"), str):
        from dfine_cli.engine.finetune import parse_class_map

        flags["class_map"] = parse_class_map(flags["class_map"])
    cfg = TrainConfig()
    if config is not None:
        cfg = merge(cfg, load_config_file(config), f"config file {config}")
    cfg = merge(cfg, parse_set(list(sets)), "--set")
    cfg = merge(cfg, flags, "flag")
    return validate(cfg)


def run_training(
    flags: Mapping[str, Any],
    config: Path | None = None,
    sets: Sequence[str] = (),
    *,
    launch: LaunchOptions | None = None,
    progress: Progress | None = None,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """Train with the settings of :func:`build_config`; return the run's summary.

    - Under an external ``torchrun`` (``RANK``/``WORLD_SIZE`` set, world > 1) this process is
      one worker; workers other than rank 0 return ``None``.
    - With ``launch`` asking for more than one process, the workers are started from here
      (:func:`dfine_cli.engine.trainer.launch_training`).
    - Otherwise one process trains, with ``progress`` bars.

    The summary holds ``run_dir``, ``epochs_run``, ``best_metric`` (mAP 50:95),
    ``best_epoch``, ``processes``, ``last_checkpoint``, ``best_checkpoint`` (``None`` when
    no epoch was evaluated), and more keys a single process reports (``stopped_early``,
    ``skipped_steps``).
    """
    from dfine_cli.engine import distributed
    from dfine_cli.engine.trainer import launch_training, train

    launch = launch or LaunchOptions()
    cfg = build_config(flags, config, sets)
    external = distributed.env_world()
    processes = launch.nproc_per_node * launch.nnodes
    summary: dict[str, Any]
    if external is not None and external[1] > 1:
        backend = launch.backend or distributed.default_backend(cfg.device)
        summary = distributed.run_worker(cfg.to_dict() | {"_verbose": verbose}, backend, launch.timeout_s)
        if external[0] != 0:
            return None
        processes = max(processes, external[1])
    elif processes > 1:
        summary = launch_training(cfg, launch, verbose=verbose)
    else:
        result = train(cfg, progress=progress)
        summary = {
            "run_dir": str(result.run_dir), "epochs_run": result.epochs_run,
            "best_metric": result.best_metric, "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early, "skipped_steps": result.skipped_steps,
        }
    run_dir = Path(summary["run_dir"])
    best = run_dir / "best.pth"
    return {**summary, "processes": processes, "last_checkpoint": str(run_dir / "last.pth"),
            "best_checkpoint": str(best) if best.exists() else None,
            "throughput": _last_throughput(run_dir)}


def _last_throughput(run_dir: Path) -> dict[str, float] | None:
    """images/s, data-wait fraction and step time of the run's last epoch (``metrics.json``)."""
    try:
        history = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return last_epoch_throughput(history) if isinstance(history, list) else None
