"""Multi-process training on PyTorch's own engine: torch.distributed + torchelastic.

``launch`` starts ``nproc_per_node`` workers through torchrun's launcher API
(``torch.distributed.launcher.api.elastic_launch``), so rendezvous, failure detection and
restarts are torchelastic's. The same worker code runs under an external ``torchrun``.

- Backend: NCCL on CUDA, gloo on CPU (overridable).
- ``timeout_s`` bounds every collective: a dead peer ends the run instead of hanging;
  ``rdzv_timeout_s`` bounds the wait for all nodes to join (and to reach the endpoint).
- Ranks follow ``--node-rank``: global rank = node rank x processes per node + local rank, so
  rank 0, the only process that writes files, always runs on node 0 (torchelastic's own
  rendezvous orders nodes by host name and process id instead).
- Node 0 decides: its settings, and whether (and from which ``last.pth``) to resume, are
  sent to every rank at start. Other nodes keep only their own ``--data``, ``--device`` and
  ``--workers``, need no copy of the run folder and never write to it.
- With ``max_restarts > 0`` the agents restart all workers after a failure; they resume from
  the run's ``last.pth`` (written atomically, so it is always loadable).
- Evaluation is sharded and gathered once per image id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dfine_cli.devices import wants_cuda
from dfine_cli.engine.config import TrainConfig
from dfine_cli.errors import (
    CheckpointError,
    DataError,
    DependencyError,
    DfineError,
    HardwareError,
    Terminated,
    TrainingError,
    UsageError,
)

T = TypeVar("T")

log = logging.getLogger("dfine.dist")

# Errors a worker raises keep their category (and exit code) when the launcher reports them.
_WORKER_ERRORS: dict[str, type[DfineError]] = {
    cls.__name__: cls
    for cls in (UsageError, DataError, CheckpointError, DependencyError, HardwareError, TrainingError)
}


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port; default 127.0.0.1:<free port> on one node
    backend: str | None = None  # nccl / gloo; default by device
    timeout_s: float = 1800.0
    max_restarts: int = 0
    rdzv_timeout_s: float = 900.0  # seconds for every node to join, or to reach the endpoint


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """This machine's place in a multi-node job: its ``--node-rank`` and reachable address."""

    node_rank: int
    address: str


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a worker runs: its ranks and, per global rank, ``(node rank, node address)``."""

    rank: int
    world: int
    local_rank: int
    nodes: dict[int, tuple[int, str]]

    @property
    def node_rank(self) -> int:
        return self.nodes.get(self.rank, (0, ""))[0]

    def describe_node(self, node_rank: int) -> str:
        addresses = sorted({addr for n, addr in self.nodes.values() if n == node_rank and addr})
        return f"node {node_rank}" + (f" ({', '.join(addresses)})" if addresses else "")


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun/torchelastic, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world < 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def local_main_first(fn: Callable[[], T], local_rank: int, world: int) -> T:
    """``fn()`` on local rank 0 of each machine first, then on the machine's other processes.

    For work whose result stays on disk, such as converting a YOLO dataset to its COCO cache:
    the other processes wait until local rank 0 is done (or has failed), then call ``fn``
    themselves and find the result instead of doing the work again. Outside an initialised
    process group of several processes it just calls ``fn``. Local rank 0 re-raises its own
    exception only after the others were released, so no process waits for it in vain.
    """
    if world <= 1 or not (dist.is_available() and dist.is_initialized()):
        return fn()
    if local_rank != 0:
        _all_meet()  # wait for local rank 0
        return fn()
    try:
        return fn()
    finally:
        _all_meet()  # release the others


def _all_meet() -> None:
    """Return once every process of the group has called this (a barrier that needs nothing
    but a one-element all-reduce on the backend's device)."""
    dist.all_reduce(torch.zeros(1, device=collective_device()))


def collective_device() -> torch.device:
    """Where the initialised process group's tensors must live: this process's GPU for NCCL,
    the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def default_backend(device: str) -> str:
    """The process-group backend for ``device``: NCCL for CUDA GPUs, Gloo otherwise."""
    return "nccl" if wants_cuda(device) else "gloo"


def init_process_group(backend: str, timeout_s: float, node: NodeInfo | None = None) -> Placement:
    """Join the process group; returns this worker's placement.

    With ``node`` (multi-node ``dfine train``), the global rank is derived from the node rank
    and the ranks every node claims are checked: two nodes with the same ``--node-rank`` or
    different ``--nproc-per-node`` fail on every node with one message.
    """
    world = env_world()
    if dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        return Placement(rank, size, world[2] if world else 0, {})
    if backend == "nccl" and not torch.cuda.is_available():
        raise DependencyError("the nccl backend needs CUDA GPUs; use --dist-backend gloo on CPU")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=timeout_s)
    if world is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
        return Placement(dist.get_rank(), dist.get_world_size(), 0, {})
    elastic_rank, size, local_rank = world
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
        is_master=(elastic_rank == 0 and not agent_store), timeout=timeout,
    )
    if agent_store:
        # The agent's store lives as long as the agent: keys under a per-attempt prefix, so
        # after a restart peers never read the addresses a dead attempt published.
        prefix = f"dfine/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    else:
        prefix = "dfine"  # a fresh store per rendezvous round (see ``launch``)
    prefixed = dist.PrefixStore(prefix, store)
    rank, nodes = elastic_rank, {}
    if node is not None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        rank = node.node_rank * local_world + local_rank
        nodes = _exchange_placement(prefixed, elastic_rank, size, rank, node)
        os.environ["RANK"] = str(rank)  # log prefixes and env_world() follow the real rank
    dist.init_process_group(backend=backend, store=dist.PrefixStore("pg", prefixed),
                            rank=rank, world_size=size, timeout=timeout)
    return Placement(rank, size, local_rank, nodes)


def _exchange_placement(store: dist.Store, elastic_rank: int, size: int, rank: int,
                        node: NodeInfo) -> dict[int, tuple[int, str]]:
    """Publish ``(rank, node rank, address)``, read everyone's and check the ranks are 0..size-1."""
    store.set(f"place/{elastic_rank}", json.dumps([rank, node.node_rank, node.address]))
    keys = [f"place/{r}" for r in range(size)]
    store.wait(keys)
    claims = [json.loads(store.get(k).decode()) for k in keys]
    nodes: dict[int, tuple[int, str]] = {}
    clashes: set[int] = set()
    for claimed, node_rank, address in claims:
        if claimed in nodes or not 0 <= claimed < size:
            clashes.add(node_rank)
        nodes[claimed] = (int(node_rank), str(address))
    if clashes or len(nodes) != size:
        listing = ", ".join(sorted({f"{addr} has --node-rank {n}" for _, n, addr in claims}))
        raise UsageError(f"the nodes' --node-rank values clash or their --nproc-per-node differ ({listing}); "
                         f"every node needs its own --node-rank in 0..nnodes-1 and the same --nproc-per-node")
    return nodes


def ddp_wrapper(device: torch.device, sync_bn: bool = True) -> Callable[[nn.Module], nn.Module]:
    """Wrap the model for DDP (SyncBatchNorm on CUDA, as the recipes use)."""

    def wrap(model: nn.Module) -> nn.Module:
        if sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        # Negative-only batches leave the denoising embedding unused.
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    return wrap


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every parameter's bytes, in ``named_parameters`` order.

    Equal on every rank of a DDP run after each step; buffers (BatchNorm statistics, which are
    per process without SyncBatchNorm) are left out.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_worker(cfg_dict: dict[str, Any], backend: str, timeout_s: float,
               node: NodeInfo | None = None) -> dict[str, Any]:
    """Body of one worker process (also used as-is under an external ``torchrun``)."""
    from dfine_cli.engine.trainer import DistInfo, Trainer
    from dfine_cli.logs import setup_logging

    if env_world() is None:
        raise UsageError("run_worker needs the RANK/WORLD_SIZE environment of torchrun")
    cfg_dict = dict(cfg_dict)
    verbose = bool(cfg_dict.pop("_verbose", False))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))
    place = init_process_group(backend, timeout_s, node)
    setup_logging(verbose)
    if place.rank != 0 and not verbose:
        logging.getLogger("dfine").setLevel(logging.WARNING)
    device = torch.device("cuda", place.local_rank) if backend == "nccl" else torch.device("cpu")
    own = TrainConfig(**cfg_dict)
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    scratch = Path(tempfile.mkdtemp(prefix="dfine-worker-"))  # node-local; never the run folder
    try:
        cfg = _agree_on_config(own, place, restarts, device, scratch)
        trainer = Trainer(cfg, dist=DistInfo(rank=place.rank, world=place.world, local_rank=place.local_rank),
                          ddp_wrap=ddp_wrapper(device))
        if trainer.cfg.data != own.data and own.data:
            trainer.cfg = dataclasses.replace(trainer.cfg, data=own.data)  # this node's copy
        shutil.rmtree(scratch, ignore_errors=True)
        result = trainer.fit()
        log.info("weights sha256 %s (node %d, rank %d, epoch %d)", weights_digest(trainer.model),
                 place.node_rank, place.rank, result.epochs_run)
    except DfineError:
        raise
    except (RuntimeError, dist.DistError) as exc:
        if not _is_peer_failure(exc):
            raise
        error = _lost_peer_error(exc, place, own)
        if restarts < int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) and place.local_rank == 0:
            log.warning("%s; restarting (restart %d), waiting for every node to join again",
                        str(error).split(". Last checkpoint")[0], restarts + 1)
        raise error from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if dist.is_initialized():
            dist.destroy_process_group()
    # On other nodes, the run folder named is node 0's (they hold no copy of it).
    run_dir = result.run_dir if place.node_rank == 0 else Path(trainer.cfg.output or result.run_dir)
    return {"run_dir": str(run_dir), "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "skipped_steps": result.skipped_steps, "stopped_early": result.stopped_early}


def _agree_on_config(own: TrainConfig, place: Placement, restarts: int, device: torch.device,
                     scratch: Path) -> TrainConfig:
    """Node 0's settings and resume decision, on every rank.

    Rank 0 resumes from ``cfg.resume`` or, after a restart, from the run's ``last.pth``. Ranks on
    other nodes receive that checkpoint's bytes and read them from a node-local scratch file,
    so they need neither the run folder nor a shared file system.
    """
    shared_disk = place.world == 1 or not place.nodes  # one node, or an external torchrun
    # On one node every rank reads the same disk and decides alike; across nodes rank 0 decides.
    resume = _resume_source(own, restarts) if shared_disk or place.rank == 0 else None
    if resume is not None and restarts > 0 and place.rank == 0:
        log.warning("restart %d: resuming from %s", restarts, resume)
    if shared_disk:
        return dataclasses.replace(own, resume=str(resume)) if resume else own
    settings = own.to_dict() | {"resume": str(resume) if resume else None}
    received = json.loads(_broadcast_bytes(json.dumps(settings).encode() if place.rank == 0 else None, device))
    cfg = TrainConfig(**received)
    cfg = dataclasses.replace(cfg, data=own.data or cfg.data, device=own.device, workers=own.workers)
    if cfg.resume is None:
        return cfg
    payload = _broadcast_bytes(Path(cfg.resume).read_bytes() if place.rank == 0 else None, device)
    if place.node_rank == 0:
        return cfg
    copy = scratch / "last.pth"
    copy.write_bytes(payload)
    if place.local_rank == 0:
        log.warning("resuming from node 0's %s (%d bytes received)", cfg.resume, len(payload))
    return dataclasses.replace(cfg, resume=str(copy))


def _resume_source(own: TrainConfig, restarts: int) -> Path | None:
    """After a restart, the run's ``last.pth`` (if any); else the ``--resume`` checkpoint."""
    last = Path(own.output) / "last.pth" if own.output else None
    if restarts > 0 and last is not None and last.is_file():
        return last
    return Path(own.resume) if own.resume else None


def _broadcast_bytes(data: bytes | None, device: torch.device) -> bytes:
    """Rank 0's ``data`` on every rank (two broadcasts: the length, then the bytes)."""
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    if data is not None:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, 0)
    return bytes(buffer.cpu().numpy().tobytes())


# How gloo, NCCL and the c10d store report a peer that died or went silent.
_PEER_FAILURE = re.compile(r"connection (closed|reset|refused)|closed by peer|broken pipe|timed out|timeout|"
                           r"gloo|nccl|socket|recv|send", re.IGNORECASE)


def _is_peer_failure(exc: BaseException) -> bool:
    return isinstance(exc, dist.DistError) or bool(_PEER_FAILURE.search(str(exc)))


_LOST = "lost "  # how a lost-peer error begins (the launcher tells it from a worker's own error)
_ADDRESS = re.compile(r"\[?((?:\d{1,3}\.){3}\d{1,3})\]?:\d+")


def _lost_peer_error(exc: BaseException, place: Placement, own: TrainConfig) -> TrainingError:
    """One line naming the node a failed collective lost, and where the last checkpoint is."""
    text = " ".join(str(exc).split())
    mine = place.nodes.get(place.rank, (0, ""))[1]
    peers = sorted({n for n, addr in place.nodes.values()
                    for found in _ADDRESS.findall(text) if found == addr and addr != mine})
    if peers:
        who = " and ".join(place.describe_node(n) for n in peers)
    elif place.nodes and place.node_rank != 0:
        who = f"the connection to {place.describe_node(0)} or another node"
    else:
        who = "another process of the job"
    first = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text).split(". ")[0][:200]
    return TrainingError(f"{_LOST}{who} during training ({first}). {_last_checkpoint(place, own)}")


def _last_checkpoint(place: Placement, own: TrainConfig) -> str:
    last = Path(own.output or ".") / "last.pth"
    if place.node_rank != 0:
        return f"Last checkpoint: on node 0, {last} if it was written"
    return f"Last checkpoint: {last if last.is_file() else 'none'}"


def launch(cfg: TrainConfig, options: LaunchOptions, verbose: bool = False) -> dict[str, Any]:
    """Start the workers with torchelastic and wait; returns rank 0's result."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
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
    node: NodeInfo | None = None
    local_addr: str | None = None
    if options.nnodes > 1:
        host, port = parse_endpoint(endpoint)
        local_addr = local_address_towards(host, port, options.rdzv_timeout_s)
        if options.node_rank != 0:
            wait_for_endpoint(host, port, options.rdzv_timeout_s)
        node = NodeInfo(options.node_rank, local_addr)
        log.info("node %d of %d: address %s, rendezvous at %s", options.node_rank, options.nnodes,
                 local_addr, endpoint)
    # c10d rendezvous (torchrun's elastic default): every node passes the same endpoint; a new
    # rendezvous round after a failure lets restarted workers build a fresh process group.
    # Node 0 (``--node-rank 0``) hosts the rendezvous store.
    rdzv_timeout = max(1, int(options.rdzv_timeout_s))
    # The agent's per-worker logs and error files go to a folder of ours, removed after the
    # launch (by default each launch leaves a torchelastic_* folder in the temp directory).
    agent_dir = tempfile.mkdtemp(prefix="dfine-launch-")
    config = LaunchConfig(
        min_nodes=options.nnodes, max_nodes=options.nnodes, nproc_per_node=options.nproc_per_node,
        run_id=os.environ.get("DFINE_RUN_ID", "dfine"), rdzv_backend="c10d", rdzv_endpoint=endpoint,
        rdzv_configs={"join_timeout": rdzv_timeout, "read_timeout": min(60, rdzv_timeout),
                      "is_host": options.node_rank == 0},
        max_restarts=options.max_restarts, monitor_interval=0.5, start_method="spawn",
        local_addr=local_addr,
        logs_specs=DefaultLogsSpecs(log_dir=agent_dir),
    )
    previous_tempdir = tempfile.tempdir
    payload = cfg.to_dict() | {"_verbose": verbose}
    if not verbose:  # failures are rendered as one line below; the agent's report is for --verbose
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # Across nodes, a fresh store per rendezvous round, hosted by the round's first worker: a
    # node started again (restart count 0) and the survivors (count 1) then meet on clean keys.
    share = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if options.nnodes > 1 else {}
    try:
        # torch.multiprocessing leaves a pytorch-errorfile-*.pickle in the temp directory for
        # every worker that dies by a signal; while this process launches, that is our folder.
        tempfile.tempdir = agent_dir
        with _environ(share), signal_handlers_restored():
            results = elastic_launch(config, run_worker)(payload, backend, options.timeout_s, node)
    except ChildFailedError as exc:
        raise _child_failure(exc, cfg) from None
    except RendezvousError as exc:
        raise _rendezvous_failure(exc, endpoint, options) from None
    except SignalException as exc:  # the agent stopped its workers on a signal to this process
        raise _signal_stop(exc.sigval) from None
    finally:
        tempfile.tempdir = previous_tempdir
        shutil.rmtree(agent_dir, ignore_errors=True)
    return dict(results.get(0) or next(iter(results.values())))


def _signal_stop(sigval: int) -> BaseException:
    """What a signal that stopped the agent means here: Ctrl-C (SIGINT) is an interrupt, any
    other (SIGTERM, SIGHUP, SIGQUIT) a termination; the CLI exits 130 or 143, as one process
    does."""
    if sigval == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(f"terminated by {signal.Signals(sigval).name}")


#: The signals whose handlers torchelastic's agent replaces and does not put back.
_AGENT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                       if hasattr(signal, name))


@contextlib.contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """Put back the process's signal handlers after a launch: torchelastic's agent installs its
    own (which raise ``SignalException``) and leaves them, so a library caller's later Ctrl-C
    would be turned into a torchelastic error."""
    saved = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):  # not the main thread / not settable
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → ``(host, port)``; a malformed value is a UsageError."""
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", endpoint.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UsageError(f"--rdzv-endpoint must be host:port (e.g. 10.0.0.1:29500), got {endpoint!r}")
    return match.group(1), int(match.group(2))


def local_address_towards(host: str, port: int, timeout_s: float) -> str:
    """The address of this machine's interface that routes to ``host`` (no packet is sent).

    Other nodes reach this node's workers at that address; the host name is not used because
    it often resolves to a loopback address (``127.0.1.1``) in ``/etc/hosts``.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TrainingError(f"cannot resolve the rendezvous host {host!r} of --rdzv-endpoint "
                            f"({exc.strerror}); use node 0's IP address or a name every node resolves") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.settimeout(timeout_s)
        try:
            probe.connect(sockaddr)
        except OSError as exc:
            raise TrainingError(f"no route to the rendezvous host {host} ({exc.strerror})") from None
        return str(probe.getsockname()[0])


def wait_for_endpoint(host: str, port: int, timeout_s: float) -> None:
    """Retry a TCP connection to node 0's rendezvous port until it answers or ``timeout_s`` ends.

    Node 0 may start later than the others; a port that stays closed (wrong address or port,
    firewall) becomes one :class:`TrainingError` after ``timeout_s`` instead of torch's retries.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TrainingError(f"rendezvous at {host}:{port} failed: nothing answered within --rdzv-timeout "
                                f"{timeout_s:g} s ({last}); start node 0 first and check the address, the "
                                f"port and firewalls")
        try:
            with socket.create_connection((host, port), timeout=min(5.0, remaining)):
                return
        except OSError as exc:
            last = (exc.strerror or type(exc).__name__).lower()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_error(failure: Any) -> DfineError | None:
    """The :class:`DfineError` a worker raised, rebuilt from its torchelastic error file."""
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else ""
    name, _, text = str(message).partition(": ")
    return _WORKER_ERRORS[name](" ".join(text.split())) if name in _WORKER_ERRORS and text else None


def _child_failure(exc: Any, cfg: TrainConfig) -> DfineError:
    """One error for the failed workers of this node.

    A worker's own error keeps its category (a data error stays exit 3). A worker that died
    here (signal, crash) is named by rank; a worker that only lost a peer names the node of
    that peer, which is the cause when the dead process ran on another machine.
    """
    failures = sorted((getattr(exc, "failures", {}) or {}).items())
    errors = {rank: _worker_error(failure) for rank, failure in failures}
    lost_peer = [e for e in errors.values() if e is not None and str(e).startswith(_LOST)]
    for error in errors.values():
        if error is not None and error not in lost_peer:
            return error
    died = [(rank, failure) for rank, failure in failures if errors[rank] is None]
    if lost_peer and not died:
        return lost_peer[0]
    described = []
    for rank, failure in died:
        code = getattr(failure, "exitcode", "?")
        signal_note = f" (signal {-code})" if isinstance(code, int) and code < 0 else ""
        described.append(f"rank {rank} exited with code {code}{signal_note}")
    last = Path(cfg.output or ".") / "last.pth"
    return TrainingError(
        f"distributed training failed: {'; '.join(described) or str(exc).splitlines()[0]}. "
        f"Last checkpoint: {last if last.exists() else 'none'} (resume with --resume auto)"
    )


def _rendezvous_failure(exc: BaseException, endpoint: str, options: LaunchOptions) -> TrainingError:
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousClosedError,
        RendezvousTimeoutError,
    )

    if isinstance(exc, RendezvousTimeoutError):
        cause = (f"not all {options.nnodes} nodes joined within --rdzv-timeout "
                 f"{options.rdzv_timeout_s:g} s")
    elif isinstance(exc, RendezvousClosedError):
        cause = "another node closed the job (it failed, or ran out of restarts)"
    elif options.node_rank == 0:
        cause = (f"node 0 could not host it ({type(exc).__name__}); is {endpoint} this machine's "
                 f"address and the port free?")
    else:
        cause = f"lost the connection to node 0 ({type(exc).__name__})"
    return TrainingError(f"rendezvous at {endpoint} failed: {cause}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
