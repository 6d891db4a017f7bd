"""Multi-process training on PyTorch's own engine: torch.distributed + torchelastic.

``launch`` starts ``nproc_per_node`` workers through torchrun's launcher API
(``torch.distributed.launcher.api.elastic_launch``), so rendezvous, failure detection and
restarts are torchelastic's. The same worker code runs under an external ``torchrun``.

- Backend: NCCL on CUDA, gloo on CPU (overridable).
- ``timeout_s`` bounds every collective: a dead peer ends the run instead of hanging.
- With ``max_restarts > 0`` the agent restarts all workers after a failure; they resume from
  the run's ``last.pth`` (written atomically, so it is always loadable).
- Only rank 0 writes files; evaluation is sharded and gathered once per image id.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dfine_cli.engine.config import TrainConfig
from dfine_cli.errors import DependencyError, TrainingError, UsageError

log = logging.getLogger("dfine.dist")


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port; default 127.0.0.1:<free port> on one node
    backend: str | None = None  # nccl / gloo; default by device
    timeout_s: float = 1800.0
    max_restarts: int = 0


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun/torchelastic, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world < 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def default_backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def init_process_group(backend: str, timeout_s: float) -> None:
    if dist.is_initialized():
        return
    if backend == "nccl" and not torch.cuda.is_available():
        raise DependencyError("the nccl backend needs CUDA GPUs; use --dist-backend gloo on CPU")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=timeout_s)
    world = env_world()
    if world is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
        return
    rank, size, _ = world
    # Keys under a per-attempt prefix: after a torchelastic restart, peers must never read
    # the addresses the previous (dead) attempt published in the same store.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
        is_master=(rank == 0 and not agent_store), timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"dfine/attempt_{attempt}", store),
                            rank=rank, world_size=size, timeout=timeout)


def ddp_wrapper(device: torch.device, sync_bn: bool = True) -> Callable[[nn.Module], nn.Module]:
    """Wrap the model for DDP (SyncBatchNorm on CUDA, as the recipes use)."""

    def wrap(model: nn.Module) -> nn.Module:
        if sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        # Negative-only batches leave the denoising embedding unused.
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    return wrap


def run_worker(cfg_dict: dict[str, Any], backend: str, timeout_s: float) -> dict[str, Any]:
    """Body of one worker process (also used as-is under an external ``torchrun``)."""
    from dfine_cli.cli._common import setup_logging
    from dfine_cli.engine.trainer import DistInfo, Trainer

    world = env_world()
    if world is None:
        raise UsageError("run_worker needs the RANK/WORLD_SIZE environment of torchrun")
    rank, size, local_rank = world
    verbose = bool(cfg_dict.pop("_verbose", False))
    setup_logging(verbose)
    if rank != 0 and not verbose:
        logging.getLogger("dfine").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))
    init_process_group(backend, timeout_s)
    cfg = TrainConfig(**cfg_dict)
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts > 0 and cfg.output and (Path(cfg.output) / "last.pth").is_file():
        log.warning("restart %d: resuming from %s", restarts, Path(cfg.output) / "last.pth")
        cfg = dataclasses.replace(cfg, resume=str(Path(cfg.output) / "last.pth"))
    info = DistInfo(rank=rank, world=size, local_rank=local_rank)
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    try:
        trainer = Trainer(cfg, dist=info, ddp_wrap=ddp_wrapper(device))
        result = trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return {"run_dir": str(result.run_dir), "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "skipped_steps": result.skipped_steps, "stopped_early": result.stopped_early}


def launch(cfg: TrainConfig, options: LaunchOptions, verbose: bool = False) -> dict[str, Any]:
    """Start the workers with torchelastic and wait; returns rank 0's result."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if options.nproc_per_node < 1 or options.nnodes < 1:
        raise UsageError("--nproc-per-node and --nnodes must be >= 1")
    backend = options.backend or default_backend(cfg.device)
    if backend not in ("gloo", "nccl"):
        raise UsageError(f"unknown --dist-backend {backend!r} (gloo or nccl)")
    if backend == "nccl" and not torch.cuda.is_available():
        raise DependencyError("--dist-backend nccl needs CUDA GPUs (none found); use gloo on CPU")
    if cfg.batch_size % (options.nproc_per_node * options.nnodes):
        raise UsageError(f"--batch-size {cfg.batch_size} is the total batch; it must divide by the "
                         f"{options.nproc_per_node * options.nnodes} processes")
    if options.nnodes > 1 and options.rdzv_endpoint is None:
        raise UsageError("multi-node runs need --rdzv-endpoint host:port (the same on every node)")
    if not 0 <= options.node_rank < options.nnodes:
        raise UsageError(f"--node-rank must be in 0..{options.nnodes - 1}")
    endpoint = options.rdzv_endpoint or f"127.0.0.1:{_free_port()}"
    # c10d rendezvous (torchrun's elastic default): every node passes the same endpoint; a new
    # rendezvous round after a failure lets restarted workers build a fresh process group.
    # Node 0 (``--node-rank 0``) hosts the store.
    config = LaunchConfig(
        min_nodes=options.nnodes, max_nodes=options.nnodes, nproc_per_node=options.nproc_per_node,
        run_id=os.environ.get("DFINE_RUN_ID", "dfine"), rdzv_backend="c10d", rdzv_endpoint=endpoint,
        rdzv_configs={"timeout": int(options.timeout_s), "is_host": options.node_rank == 0},
        max_restarts=options.max_restarts, monitor_interval=0.5, start_method="spawn",
    )
    payload = cfg.to_dict() | {"_verbose": verbose}
    try:
        results = elastic_launch(config, run_worker)(payload, backend, options.timeout_s)
    except ChildFailedError as exc:
        failures = getattr(exc, "failures", {}) or {}
        described = []
        for rank, failure in sorted(failures.items()):
            code = getattr(failure, "exitcode", "?")
            signal_note = f" (signal {-code})" if isinstance(code, int) and code < 0 else ""
            described.append(f"rank {rank} exited with code {code}{signal_note}")
        last = Path(cfg.output or ".") / "last.pth"
        raise TrainingError(
            f"distributed training failed: {'; '.join(described) or str(exc).splitlines()[0]}. "
            f"Last checkpoint: {last if last.exists() else 'none'} (resume with --resume auto)"
        ) from None
    return dict(results.get(0) or next(iter(results.values())))


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
