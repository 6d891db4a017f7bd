"""Multi-node training across a real network stack: two Linux network namespaces as two hosts.

Each test "host" is a network namespace (``ip netns``) with its own address on a veth pair
(``10.231.N.1`` and ``10.231.N.2``, a /30 that exists only between the two namespaces); each
node is one ``dfine train --nnodes 2 --node-rank K`` process inside its namespace, so every
byte between the nodes crosses the veth link, never loopback, and nothing else is contacted
(the namespaces have no other route). Creating namespaces needs root and ``iproute2``; where
that is impossible the tests skip with the reason.

Tolerance for "two nodes equal one host with two processes" is the single-host test's
(tests/engine/test_distributed.py): first epoch's mean loss within 10%, mAP within 0.05.

The three tests that train are marked ``slow`` (together several minutes on two cores):
``python -m pytest -m slow tests/engine/test_multinode.py``. The default run keeps the ones
that fail before training (wrong endpoints, a dataset that differs between nodes).

The file system is shared between the namespaces (one machine), so the tests give node 1 its
own ``--data`` copy and an ``--output`` that must never be created: a node other than node 0
needs neither node 0's run folder nor its dataset path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfine_cli.checkpoints import read_checkpoint
from dfine_cli.data.synth import make_synthetic_dataset

DIST_TIMEOUT_S = 30
# Margin over --dist-timeout for the surviving node to notice, stop its agent and exit: process
# start-up is not in it, but a loaded 2-core machine is.
EXIT_MARGIN_S = 90
RDZV_TIMEOUT_S = 10  # the wrong-endpoint tests wait this long on purpose
RUN_LIMIT_S = 900  # a whole run; only reached when something hangs


@dataclasses.dataclass(frozen=True)
class Host:
    namespace: str
    interface: str
    address: str


@dataclasses.dataclass(frozen=True)
class Hosts:
    node0: Host
    node1: Host


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _why_no_namespaces() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    """Two namespaces joined by a veth pair; removed afterwards, whatever the tests did."""
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    pid = os.getpid()
    subnet = f"10.231.{pid % 250}"
    node0 = Host(f"dfn{pid}a", f"dfn{pid}a0", f"{subnet}.1")
    node1 = Host(f"dfn{pid}b", f"dfn{pid}b0", f"{subnet}.2")
    made: list[str] = []
    try:
        for host in (node0, node1):
            res = _ip("netns", "add", host.namespace)
            if res.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
            made.append(host.namespace)
        steps = [
            ("link", "add", node0.interface, "type", "veth", "peer", "name", node1.interface),
            ("link", "set", node0.interface, "netns", node0.namespace),
            ("link", "set", node1.interface, "netns", node1.namespace),
        ]
        for host in (node0, node1):
            steps += [
                ("-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", host.interface),
                ("-n", host.namespace, "link", "set", "lo", "up"),
                ("-n", host.namespace, "link", "set", host.interface, "up"),
            ]
        for step in steps:
            res = _ip(*step)
            if res.returncode != 0:
                pytest.skip(f"cannot set up the veth link (ip {' '.join(step)}): {res.stderr.strip()}")
        yield Hosts(node0, node1)
    finally:
        for namespace in made:
            _ip("netns", "delete", namespace)  # takes the veth pair with it


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mn-data")
    make_synthetic_dataset(root, num_images=8, num_classes=2, seed=2, img_size=128)
    return root


@pytest.fixture(scope="module")
def data_copy(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Node 1's own copy of the dataset, at another path."""
    copy = tmp_path_factory.mktemp("mn-data-node1") / "dataset"
    shutil.copytree(data, copy)
    return copy


_ports = iter(range(29611, 29700))


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    # 256 px is the smallest size whose two feature levels hold the 300 queries of size n.
    return ["train", "--data", str(data), "--model", "n", "--epochs", "1", "--img-size", "256",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--seed", "5",
            "--set", "num_denoising=10", "--no-pretrained", "--output", str(out),
            "--dist-backend", "gloo", "--dist-timeout", str(DIST_TIMEOUT_S), *extra]


def _env(interface: str | None = None) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1",
           "DFINE_WEIGHTS_URL": "http://127.0.0.1:9/"}  # never used (--no-pretrained); never the internet
    if interface:
        env["GLOO_SOCKET_IFNAME"] = interface
    return env


@dataclasses.dataclass
class Node:
    """A ``dfine train`` process; its output goes to files (pipes could fill and stall it)."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def finish(self, timeout: float = RUN_LIMIT_S) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
            pytest.fail(f"no exit within {timeout} s: {self.stderr.read_text()[-3000:]}")
        return self.proc.returncode, self.stdout.read_text(), self.stderr.read_text()

    def kill(self) -> None:
        """SIGKILL the node's whole process group: agent and workers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _run_node(host: Host, args: list[str], logs: Path) -> Node:
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("*.err")))
    out, err = logs / f"{host.namespace}-{n}.out", logs / f"{host.namespace}-{n}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        # A session of its own: the test can kill the node's whole process group.
        proc = subprocess.Popen(["ip", "netns", "exec", host.namespace, sys.executable, "-m", "dfine_cli", *args],
                                stdout=stdout, stderr=stderr, env=_env(host.interface), start_new_session=True)
    return Node(proc, out, err)


def _start_node(host: Host, rank: int, endpoint: str, data: Path, out: Path, *extra: str,
                verbose: bool = False, rdzv_timeout: float = 120) -> Node:
    args = [*(["--verbose"] if verbose else []),
            *_train_args(data, out, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                         "--rdzv-endpoint", endpoint, "--rdzv-timeout", str(rdzv_timeout), *extra)]
    return _run_node(host, args, out.parent / "logs")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _digests(stderr: str) -> dict[int, str]:
    return {int(node): digest for digest, node in re.findall(r"weights sha256 (\w+) \(node (\d+)", stderr)}


def _endpoint(hosts: Hosts) -> str:
    return f"{hosts.node0.address}:{next(_ports)}"


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_nodes_train_together_and_match_one_host(hosts: Hosts, data: Path, data_copy: Path,
                                                     tmp_path: Path) -> None:
    endpoint = _endpoint(hosts)
    run, elsewhere = tmp_path / "run", tmp_path / "node1-output"
    node0 = _start_node(hosts.node0, 0, endpoint, data, run, verbose=True)
    node1 = _start_node(hosts.node1, 1, endpoint, data_copy, elsewhere, verbose=True)
    (rc1, _, err1), (rc0, _, err0) = node1.finish(), node0.finish()
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    digests0, digests1 = _digests(err0), _digests(err1)
    assert set(digests0) == {0} and set(digests1) == {1}, (digests0, digests1)
    assert digests0[0] == digests1[1]  # the same parameters on both nodes after the epoch
    assert f"rendezvous at {endpoint}" in err0
    assert not elsewhere.exists()  # node 1 wrote nothing: the run folder is node 0's alone
    assert {"last.pth", "best.pth", "config.yaml"} <= set(_files_under(run))
    two_nodes = read_checkpoint(run / "last.pth").training["history"][-1]

    one_host = tmp_path / "one-host"
    res = subprocess.run([sys.executable, "-m", "dfine_cli", "--verbose",
                          *_train_args(data, one_host, "--nproc-per-node", "2")],
                         capture_output=True, text=True, timeout=RUN_LIMIT_S, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    reference = read_checkpoint(one_host / "last.pth").training["history"][-1]
    assert abs(two_nodes["loss"] - reference["loss"]) <= 0.10 * abs(reference["loss"])
    assert abs(two_nodes["val_AP"] - reference["val_AP"]) <= 0.05


def _wait_for(path: Path, nodes: list[Node], timeout: float = RUN_LIMIT_S) -> None:
    start = time.time()
    while not path.exists():
        for node in nodes:
            if node.proc.poll() is not None:
                pytest.fail(f"a node exited ({node.proc.returncode}) before {path.name} appeared: "
                            f"{node.stderr.read_text()[-3000:]}")
        if time.time() - start > timeout:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


# Two epochs of six one-image steps per process; ``last.pth`` after every step, so the kill
# lands mid-epoch with a checkpoint on disk.
_KILL_ARGS = ("--epochs", "2", "--batch-size", "2", "--set", "save_every_steps=1")


@pytest.mark.slow
def test_killed_node_ends_the_survivor_in_bounded_time(hosts: Hosts, data: Path, data_copy: Path,
                                                       tmp_path: Path) -> None:
    endpoint = _endpoint(hosts)
    run = tmp_path / "run"
    node0 = _start_node(hosts.node0, 0, endpoint, data, run, *_KILL_ARGS)
    node1 = _start_node(hosts.node1, 1, endpoint, data_copy, tmp_path / "node1-output", *_KILL_ARGS)
    try:
        _wait_for(run / "last.pth", [node0, node1])
        killed_at = time.time()
        node1.kill()
        rc, _, err = node0.finish(timeout=DIST_TIMEOUT_S + EXIT_MARGIN_S)
        elapsed = time.time() - killed_at
    finally:
        node0.kill()
        node1.kill()
    assert rc == 7, err[-3000:]
    assert elapsed < DIST_TIMEOUT_S + EXIT_MARGIN_S
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert f"lost node 1 ({hosts.node1.address})" in lines[0]
    assert f"Last checkpoint: {run / 'last.pth'}" in lines[0]
    assert "Traceback" not in err
    assert read_checkpoint(run / "last.pth").training is not None


@pytest.mark.slow
def test_killed_node_started_again_resumes_with_one_restart(hosts: Hosts, data: Path, data_copy: Path,
                                                            tmp_path: Path) -> None:
    endpoint = _endpoint(hosts)
    run, elsewhere = tmp_path / "run", tmp_path / "node1-output"
    extra = (*_KILL_ARGS, "--max-restarts", "1", "--json")
    node0 = _start_node(hosts.node0, 0, endpoint, data, run, *extra)
    node1 = _start_node(hosts.node1, 1, endpoint, data_copy, elsewhere, *extra)
    again: Node | None = None
    try:
        _wait_for(run / "last.pth", [node0, node1])
        node1.kill()
        node1.proc.wait()
        again = _start_node(hosts.node1, 1, endpoint, data_copy, elsewhere, *extra)
        (rc1, _, err1), (rc0, out0, err0) = again.finish(), node0.finish()
    finally:
        for node in (node0, node1, again):
            if node is not None:
                node.kill()
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert f"lost node 1 ({hosts.node1.address})" in err0 and "restarting (restart 1)" in err0
    assert "restart 1: resuming from" in err0
    assert "resuming from node 0's" in err1  # node 1 got the checkpoint over the network
    assert _error_lines(err0) == [] and _error_lines(err1) == []
    assert json.loads(out0)["epochs_run"] == 2
    state = read_checkpoint(run / "last.pth").training
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # Only rank 0 of node 0 wrote checkpoints: node 1's --output never came to be, and no
    # checkpoint exists anywhere under the test's folder but in the run folder.
    assert not elsewhere.exists()
    assert sorted(p.parent for p in tmp_path.rglob("*.pth")) == [run, run]


@pytest.mark.parametrize("where", ["closed port", "unknown host", "node 1 never comes"])
def test_wrong_rendezvous_endpoint_fails_with_one_line(hosts: Hosts, data: Path, tmp_path: Path,
                                                       where: str) -> None:
    if where == "unknown host":  # resolved inside the namespace: /etc/hosts, then no route
        endpoint, host, rank = "no-such-host.invalid:29500", hosts.node1, 1
    elif where == "closed port":  # node 1 knocks on node 0's address, where nothing listens
        endpoint, host, rank = _endpoint(hosts), hosts.node1, 1
    else:  # node 0 waits for a node 1 that never starts ("node 1 never comes")
        endpoint, host, rank = _endpoint(hosts), hosts.node0, 0
    started = time.time()
    node = _start_node(host, rank, endpoint, data, tmp_path / "run", rdzv_timeout=RDZV_TIMEOUT_S)
    rc, _, err = node.finish(timeout=RDZV_TIMEOUT_S + EXIT_MARGIN_S)
    assert time.time() - started < RDZV_TIMEOUT_S + EXIT_MARGIN_S
    assert rc in (6, 7), err[-3000:]
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert endpoint.split(":")[0] in lines[0]
    assert "Traceback" not in err


def test_different_dataset_content_on_a_node_is_a_data_error(hosts: Hosts, data: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(data, partial)
    annotations = partial / "annotations" / "instances_train.json"
    coco = json.loads(annotations.read_text())
    coco["annotations"] = coco["annotations"][:-1]  # an older version of the labels
    annotations.write_text(json.dumps(coco))
    endpoint = _endpoint(hosts)
    run = tmp_path / "run"
    node0 = _start_node(hosts.node0, 0, endpoint, data, run)
    node1 = _start_node(hosts.node1, 1, endpoint, partial, tmp_path / "node1-output")
    (rc1, _, err1), (rc0, _, err0) = node1.finish(), node0.finish()
    for rc, err in ((rc0, err0), (rc1, err1)):
        assert rc == 3, err[-3000:]
        lines = _error_lines(err)
        assert len(lines) == 1, err[-3000:]
        assert "train split differs between nodes" in lines[0]
        assert "node 0 has 6 images, annotations" in lines[0] and "node 1 has 6 images, annotations" in lines[0]
    assert not (run / "last.pth").exists()


# -- pieces that need no namespaces ---------------------------------------------------------


def test_endpoint_parsing() -> None:
    from dfine_cli.engine.distributed import parse_endpoint
    from dfine_cli.errors import UsageError

    assert parse_endpoint("10.0.0.1:29500") == ("10.0.0.1", 29500)
    assert parse_endpoint("node0.cluster:1") == ("node0.cluster", 1)
    assert parse_endpoint("[fd00::1]:29500") == ("fd00::1", 29500)
    for bad in ("10.0.0.1", "host:", ":29500", "host:70000"):
        with pytest.raises(UsageError, match="host:port"):
            parse_endpoint(bad)


def test_closed_endpoint_port_fails_after_the_timeout() -> None:
    from dfine_cli.engine.distributed import _free_port, wait_for_endpoint
    from dfine_cli.errors import TrainingError

    port = _free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrainingError, match=r"nothing answered within --rdzv-timeout 1\.5 s \(connection refused\)"):
        wait_for_endpoint("127.0.0.1", port, 1.5)
    assert time.monotonic() - started >= 1.5


def test_local_address_is_the_interface_towards_node0() -> None:
    from dfine_cli.engine.distributed import local_address_towards

    assert local_address_towards("127.0.0.1", 29500, 1.0) == "127.0.0.1"


def test_lost_peer_is_named_from_the_failed_connection(tmp_path: Path) -> None:
    from dfine_cli.engine.config import TrainConfig
    from dfine_cli.engine.distributed import Placement, _lost_peer_error

    (tmp_path / "last.pth").write_bytes(b"")
    place = Placement(rank=0, world=4, local_rank=0,
                      nodes={0: (0, "10.0.0.1"), 1: (0, "10.0.0.1"), 2: (1, "10.0.0.2"), 3: (1, "10.0.0.2")})
    exc = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                       "[10.0.0.2]:61723")
    message = str(_lost_peer_error(exc, place, TrainConfig(output=str(tmp_path))))
    assert message.startswith("lost node 1 (10.0.0.2) during training")
    assert message.endswith(f"Last checkpoint: {tmp_path / 'last.pth'}")
    on_node1 = Placement(rank=2, world=4, local_rank=0, nodes=place.nodes)
    message = str(_lost_peer_error(RuntimeError("Connection closed by peer [10.0.0.1]:1"), on_node1, TrainConfig()))
    assert message.startswith("lost node 0 (10.0.0.1)") and "on node 0" in message


def test_launcher_reports_the_cause_not_the_symptom(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from dfine_cli.engine.config import TrainConfig
    from dfine_cli.engine.distributed import _child_failure
    from dfine_cli.errors import DataError, TrainingError

    def raised(text: str) -> SimpleNamespace:
        return SimpleNamespace(message={"message": text}, exitcode=1)

    killed = SimpleNamespace(message="Signal 9 (SIGKILL) received by PID 7", exitcode=-9)
    lost = raised("TrainingError: lost node 1 (10.0.0.2) during training (x). Last checkpoint: none")
    cfg = TrainConfig(output=str(tmp_path))

    data = _child_failure(SimpleNamespace(failures={0: lost, 1: raised("DataError: the train split differs")}), cfg)
    assert isinstance(data, DataError) and str(data) == "the train split differs"
    remote = _child_failure(SimpleNamespace(failures={0: lost}), cfg)
    assert isinstance(remote, TrainingError) and str(remote).startswith("lost node 1 (10.0.0.2)")
    local = _child_failure(SimpleNamespace(failures={0: lost, 1: killed}), cfg)
    assert str(local).startswith("distributed training failed: rank 1 exited with code -9 (signal 9)")


def test_clashing_node_ranks_are_a_usage_error() -> None:
    import torch.distributed as dist

    from dfine_cli.engine.distributed import NodeInfo, _exchange_placement
    from dfine_cli.errors import UsageError

    good = dist.HashStore()
    good.set("place/1", json.dumps([1, 1, "10.0.0.2"]))
    nodes = _exchange_placement(good, 0, 2, 0, NodeInfo(0, "10.0.0.1"))
    assert nodes == {0: (0, "10.0.0.1"), 1: (1, "10.0.0.2")}

    clash = dist.HashStore()
    clash.set("place/0", json.dumps([2, 1, "10.0.0.2"]))  # elastic rank 0 on a node that says --node-rank 1
    clash.set("place/2", json.dumps([0, 0, "10.0.0.1"]))
    with pytest.raises(UsageError, match=r"10\.0\.0\.3 has --node-rank 1"):
        _exchange_placement(clash, 1, 3, 2, NodeInfo(1, "10.0.0.3"))  # a second node says 1 too
