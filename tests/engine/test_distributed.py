"""Multi-process training on CPU with gloo (2 processes, tiny model, synthetic data).

Tolerance for "2 processes equal 1 process": BatchNorm statistics are per process (no
SyncBatchNorm on CPU), so the runs are not bit-identical; the first epoch's mean loss must
agree within 10% and the final mAP within 0.05 absolute.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from dfine_cli.checkpoints import read_checkpoint
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.engine.config import TrainConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist-data")
    make_synthetic_dataset(root, num_images=12, num_classes=3, seed=2, img_size=320)
    return root


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), model="n", epochs=1, batch_size=4, img_size=320, workers=0,
                device="cpu", output=str(out), seed=5, num_denoising=20, pretrained=False)
    base.update(kw)
    return TrainConfig(**base)


def _launch(entry, args, nproc: int = 2):
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from dfine_cli.engine.distributed import _free_port, signal_handlers_restored

    with tempfile.TemporaryDirectory(prefix="dfine-test-launch-") as logs:  # no torchelastic_* left
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="t",
                              rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{_free_port()}",
                              rdzv_configs={"rank": 0}, max_restarts=0, monitor_interval=0.2,
                              start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs))
        with signal_handlers_restored():  # the agent's handlers must not outlive the launch
            return elastic_launch(config, entry)(*args)


def param_checksum_worker(cfg_dict):
    """Train one epoch and record a checksum of the parameters after every optimizer step."""
    from dfine_cli.engine.distributed import ddp_wrapper, env_world, init_process_group
    from dfine_cli.engine.trainer import DistInfo, Trainer

    torch.set_num_threads(1)
    rank, world, local = env_world()
    init_process_group("gloo", 120)
    trainer = Trainer(TrainConfig(**cfg_dict), dist=DistInfo(rank, world, local),
                      ddp_wrap=ddp_wrapper(torch.device("cpu")))
    sums: list[str] = []
    trainer.setup()
    real_step = trainer.optimizer.step

    def step(*a, **k):
        out = real_step(*a, **k)
        h = hashlib.sha256()
        for p in trainer.model.parameters():
            h.update(p.detach().numpy().tobytes())
        sums.append(h.hexdigest())
        return out

    trainer.optimizer.step = step
    trainer.setup = lambda: None  # already set up
    result = trainer.fit()
    torch.distributed.destroy_process_group()
    return {"sums": sums, "history": result.history}


def test_parameters_stay_identical_across_ranks(data, tmp_path):
    results = _launch(param_checksum_worker, (_cfg(data, tmp_path / "run").to_dict(),))
    assert results[0]["sums"] and results[0]["sums"] == results[1]["sums"]


def test_two_processes_match_one_process(data, tmp_path):
    from dfine_cli.engine.trainer import train

    single = train(_cfg(data, tmp_path / "one"))
    results = _launch(param_checksum_worker, (_cfg(data, tmp_path / "two").to_dict(),))
    two = results[0]["history"][-1]
    one = single.history[-1]
    assert abs(two["loss"] - one["loss"]) <= 0.10 * abs(one["loss"])
    assert abs(two["val_AP"] - one["val_AP"]) <= 0.05


def yolo_setup_worker(cfg_dict):
    """Set a trainer up on a YOLO data.yaml and count the label conversions this process made.
    Local rank 0's conversions are slowed down, so a process that did not wait for them would
    find no cache yet and convert as well."""
    from dfine_cli.data import yolo
    from dfine_cli.engine.distributed import ddp_wrapper, env_world, init_process_group
    from dfine_cli.engine.trainer import DistInfo, Trainer

    torch.set_num_threads(1)
    rank, world, local = env_world()
    init_process_group("gloo", 120)
    real = yolo.convert_yolo_images
    made: list[str] = []

    def slow_convert(*args, **kwargs):
        made.append(str(args[3]))
        if local == 0:
            time.sleep(2.0)
        return real(*args, **kwargs)

    yolo.convert_yolo_images = slow_convert
    Trainer(TrainConfig(**cfg_dict), dist=DistInfo(rank, world, local),
            ddp_wrap=ddp_wrapper(torch.device("cpu"))).setup()
    torch.distributed.destroy_process_group()
    return made


def test_a_yolo_dataset_is_converted_once_per_machine(tmp_path):
    from tests.data.test_yolo import make_yolo_dataset

    make_yolo_dataset(tmp_path / "yolo", num_images=10)
    cfg = _cfg(tmp_path / "yolo" / "data.yaml", tmp_path / "run", check_images="header")
    results = _launch(yolo_setup_worker, (cfg.to_dict(),))
    assert len(results[0]) == 2 and results[1] == []  # train and val, by local rank 0 only


def local_first_failure_worker():
    """Local rank 0 fails in ``local_main_first``; the other process must be released."""
    from dfine_cli.engine.distributed import env_world, init_process_group, local_main_first
    from dfine_cli.errors import DataError

    _, world, local = env_world()
    init_process_group("gloo", 20)  # a process left waiting would fail after 20 s

    def work() -> str:
        if local == 0:
            raise DataError("labels unreadable")
        return "ran after local rank 0"

    try:
        outcome = local_main_first(work, local, world)
    except DataError as exc:
        outcome = f"raised: {exc}"
    torch.distributed.destroy_process_group()
    return outcome


def test_local_rank_0_failing_releases_the_others():
    results = _launch(local_first_failure_worker, ())
    assert results == {0: "raised: labels unreadable", 1: "ran after local rank 0"}


def eval_worker(annotations: str, images: str):
    """Evaluate a fixed tiny model on a split sharded over the ranks."""
    from dfine_cli.engine.distributed import env_world, init_process_group
    from dfine_cli.engine.evaluate import eval_loader, make_eval_split, run_evaluation
    from dfine_cli.engine.trainer import EpochSampler
    from dfine_cli.models.build import build_model
    from dfine_cli.models.dfine import DeployModel

    torch.set_num_threads(1)
    world = env_world()
    init_process_group("gloo", 120) if world else None
    rank, size = (world[0], world[1]) if world else (0, 1)
    torch.manual_seed(0)
    module = DeployModel(build_model("n", num_classes=3, num_layers=1).eval())
    split = make_eval_split(Path(images), Path(annotations), 320)
    sampler = EpochSampler(len(split.dataset), 0, rank, size, shuffle=False)
    loader = eval_loader(split.dataset, 2, 0, sampler=sampler)
    seen = [int(t["image_id"]) for _, targets in loader for t in targets]

    @torch.inference_mode()
    def predict(images, sizes):
        return module(images, sizes)

    result = run_evaluation(predict, split, loader)
    if world:
        torch.distributed.destroy_process_group()
    return {"stats": result.stats, "seen": seen, "num_images": result.num_images}


def test_distributed_eval_counts_every_image_once(data, tmp_path):
    ann = json.loads((data / "annotations" / "instances_train.json").read_text())
    ann["images"] = ann["images"][:5]
    keep = {im["id"] for im in ann["images"]}
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in keep]
    path = tmp_path / "five.json"
    path.write_text(json.dumps(ann))
    images = str(data / "images" / "train")
    single = eval_worker(str(path), images)
    results = _launch(eval_worker, (str(path), images))
    seen = results[0]["seen"] + results[1]["seen"]
    assert len(seen) == 6 and len(set(seen)) == 5  # one image padded in, evaluated once
    assert results[0]["num_images"] == 5
    for key, value in single["stats"].items():
        assert results[0]["stats"][key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    kids = {int(p): (int(pp), a) for p, pp, *rest in rows for a in [rest[0] if rest else ""]}
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, (pp, args) in kids.items():
            if pp == parent:
                frontier.append(child)
                if "spawn_main" in args:  # torchelastic's worker processes
                    found.append(child)
    return sorted(found)


def _start_training(data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "dfine_cli", "train", "--data", str(data), "--epochs", "3",
           "--img-size", "320", "--batch-size", "4", "--workers", "0", "--device", "cpu",
           "--output", str(out), "--nproc-per-node", "2", "--set", "save_every_steps=1",
           "--set", "num_denoising=20", "--no-pretrained", "--json", *extra]
    temp = out.parent / "temp"  # the launcher's temporary files, checked by the callers
    temp.mkdir(exist_ok=True)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "TMPDIR": str(temp)})


def _left_in_temp(out: Path) -> list[str]:
    """What the launcher left in its temporary folder: the agent's logs and the error files of
    killed workers must be gone (torch's compile cache, ``torchinductor_<user>``, is meant to stay)."""
    return sorted(p.name for p in (out.parent / "temp").iterdir() if not p.name.startswith("torchinductor_"))


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen[str], timeout: float = 400) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < timeout, "no checkpoint appeared"
        time.sleep(0.5)


def test_killed_worker_without_restarts_fails_in_bounded_time(data, tmp_path):
    out = tmp_path / "run"
    proc = _start_training(data, out, "--dist-timeout", "30")
    _wait_for_checkpoint(out / "last.pth", proc)
    workers = _children(proc.pid)
    if len(workers) != 2:
        proc.kill()
    assert len(workers) == 2, workers
    killed_at = time.time()
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=30 + 120)
    assert proc.returncode == 7, err[-2000:]
    assert time.time() - killed_at < 30 + 120
    assert "rank" in err and "failed" in err
    assert read_checkpoint(out / "last.pth").training is not None
    assert _left_in_temp(out) == []
    for w in workers:
        assert not Path(f"/proc/{w}").exists() or "zombie" in Path(f"/proc/{w}/status").read_text().lower()


def test_killed_worker_with_restart_resumes_and_completes(data, tmp_path):
    out = tmp_path / "run"
    proc = _start_training(data, out, "--max-restarts", "1", "--dist-timeout", "30")
    _wait_for_checkpoint(out / "last.pth", proc)
    workers = _children(proc.pid)
    os.kill(workers[0], signal.SIGKILL)
    stdout, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(stdout)
    assert summary["epochs_run"] == 3
    assert "resuming" in err
    assert read_checkpoint(out / "last.pth").training["epoch"] == 3
    assert _left_in_temp(out) == []


def test_external_torchrun_runs_each_process_as_a_worker(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "dfine_cli",
           "train", "--data", str(data), "--epochs", "1", "--img-size", "320", "--batch-size", "4",
           "--workers", "0", "--device", "cpu", "--output", str(out), "--set", "num_denoising=20", "--no-pretrained", "--json"]
    temp = tmp_path / "temp"  # torchrun's own agent leaves a torchelastic_* folder there, not in /tmp
    temp.mkdir()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_COLOR": "1", "TMPDIR": str(temp)})
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2
    assert read_checkpoint(out / "last.pth").training["epoch"] == 1


def test_signal_handlers_are_put_back_after_a_launch():
    import signal

    from dfine_cli.engine.distributed import signal_handlers_restored

    before = signal.getsignal(signal.SIGINT)

    def agent_handler(signum, frame):  # stands for torchelastic's _terminate_process_handler
        raise RuntimeError("agent")

    with signal_handlers_restored():
        signal.signal(signal.SIGINT, agent_handler)
        signal.signal(signal.SIGTERM, agent_handler)
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGTERM) is not agent_handler


def test_a_signal_that_stops_the_agent_is_an_interrupt_or_a_termination():
    import signal

    from dfine_cli.engine.distributed import _signal_stop
    from dfine_cli.errors import Terminated

    assert isinstance(_signal_stop(signal.SIGINT), KeyboardInterrupt)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        stop = _signal_stop(sig)
        assert isinstance(stop, Terminated) and sig.name in str(stop)
