"""Downloads against a real HTTP server on 127.0.0.1: cache, verification, failures, barrier."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from dfine_cli.errors import DependencyError
from dfine_cli.hub import download as download_module
from dfine_cli.hub.download import fetch_entry
from dfine_cli.hub.registry import WEIGHTS
from tests.hub.weights_server import backbone_file, detector_file

B0 = WEIGHTS["hgnetv2-b0"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_first_download_then_cached_without_request(server, tmp_path, capfd):
    body = backbone_file()
    server.put(B0.file, body)
    path = fetch_entry(B0)
    assert path == tmp_path / "home" / "weights" / f"127.0.0.1_{server.port}" / "release" / B0.file
    assert path.read_bytes() == body
    err = capfd.readouterr().err
    assert f"downloading {B0.name}" in err and "100%" in err  # plain progress lines when piped
    note = json.loads(path.with_name(path.name + ".verified").read_text())
    assert note["sha256"] == hashlib.sha256(body).hexdigest() and note["size"] == len(body)
    assert _leftovers(path.parent) == []
    assert fetch_entry(B0) == path
    assert server.count(B0.file) == 1  # the second use made no request


def test_detector_name_downloads_and_loads_strictly(server):
    entry = WEIGHTS["dfine-n-coco"]
    server.put(entry.file, detector_file("n", 80))
    path = fetch_entry(entry)
    assert path.is_file() and server.count(entry.file) == 1


def test_corrupt_file_is_deleted_and_the_next_call_downloads_again(server):
    server.put(B0.file, b"this is not a checkpoint" * 100)
    with pytest.raises(DependencyError, match=r"not a valid hgnetv2-b0 .*deleted.*run the command again"):
        fetch_entry(B0)
    dest = B0.cache_path()
    assert not dest.exists() and _leftovers(dest.parent) == []
    server.put(B0.file, backbone_file())
    assert fetch_entry(B0) == dest and dest.is_file()
    assert server.count(B0.file) == 2


def test_file_of_another_model_is_rejected(server):
    server.put(B0.file, backbone_file("hgnetv2-b2"))
    with pytest.raises(DependencyError, match="shape mismatch"):
        fetch_entry(B0)
    assert not B0.cache_path().exists()
    entry = WEIGHTS["dfine-n-coco"]
    server.put(entry.file, detector_file("n", 3))
    with pytest.raises(DependencyError, match="with 3 classes, not the D-FINE-N with 80 classes"):
        fetch_entry(entry)


def test_truncated_transfer_leaves_nothing(server):
    body = backbone_file()
    server.put(B0.file, body[: len(body) // 2], content_length=len(body))
    with pytest.raises(DependencyError) as info:
        fetch_entry(B0)
    message = str(info.value)
    assert B0.url in message and str(B0.cache_path()) in message
    assert "ended early" in message or "IncompleteRead" in message
    dest = B0.cache_path()
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_server_error_names_url_and_cache_path(server):
    server.put(B0.file, b"boom", status=500)
    with pytest.raises(DependencyError) as info:
        fetch_entry(B0, hint="or train from random initialisation with --no-pretrained")
    message = str(info.value)
    assert "HTTP 500" in message and B0.url in message
    assert f"place the file by hand at {B0.cache_path()}" in message
    assert message.endswith("--no-pretrained") and "\n" not in message


def test_offline_is_one_line_with_url_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("DFINE_WEIGHTS_URL", "http://127.0.0.1:9/nothing/")
    monkeypatch.setenv("DFINE_HOME", str(tmp_path))
    with pytest.raises(DependencyError, match="cannot reach the server") as info:
        fetch_entry(B0)
    assert "http://127.0.0.1:9/nothing/PPHGNetV2_B0_stage1.pth" in str(info.value)
    assert str(tmp_path / "weights" / "127.0.0.1_9" / "nothing" / B0.file) in str(info.value)


def test_file_placed_by_hand_is_verified_once(server):
    dest = B0.cache_path()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(backbone_file())
    assert fetch_entry(B0) == dest
    assert server.requests == [] and dest.with_name(dest.name + ".verified").is_file()


def test_corrupt_file_placed_by_hand_is_deleted(server):
    dest = B0.cache_path()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"garbage")
    with pytest.raises(DependencyError, match=r"cached file .* is not valid .*deleted"):
        fetch_entry(B0)
    assert not dest.exists() and server.requests == []


def test_sha256_is_checked_when_known(server, monkeypatch):
    import dataclasses

    body = backbone_file()
    server.put(B0.file, body)
    wrong = dataclasses.replace(B0, sha256="0" * 64)
    with pytest.raises(DependencyError, match="sha256"):
        fetch_entry(wrong)
    right = dataclasses.replace(B0, sha256=hashlib.sha256(body).hexdigest())
    assert fetch_entry(right).is_file()
    with pytest.raises(DependencyError, match=r"cached file .*not valid \(sha256 .*deleted"):
        fetch_entry(wrong)  # a cached file is re-checked against a known digest it lacks
    assert not B0.cache_path().exists()


def test_file_url_mirror(monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / B0.file).write_bytes(backbone_file())
    monkeypatch.setenv("DFINE_WEIGHTS_URL", mirror.as_uri())
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
    assert fetch_entry(B0).read_bytes() == (mirror / B0.file).read_bytes()


# -- torchrun: local rank 0 downloads, the other process waits ---------------------------------


def fetch_worker(base_url: str, home: str, names: list[str]) -> dict[str, object]:
    import torch.distributed as dist

    from dfine_cli.engine.distributed import init_process_group

    os.environ["DFINE_WEIGHTS_URL"] = base_url
    os.environ["DFINE_HOME"] = home
    init_process_group("gloo", 60)
    calls: list[str] = []
    real = download_module.download_file

    def spy(url, *args, **kwargs):
        calls.append(url)
        return real(url, *args, **kwargs)

    download_module.download_file = spy  # type: ignore[assignment]
    outcome: dict[str, object] = {"calls": calls}
    try:
        for name in names:
            try:
                outcome[name] = str(fetch_entry(WEIGHTS[name]))
            except DependencyError as exc:
                outcome[name] = f"error: {exc}"
    finally:
        dist.destroy_process_group()
    return outcome


def test_two_processes_download_once_and_share_failures(server, tmp_path):
    """Under torchrun, local rank 0 downloads while rank 1 waits; a failure reaches both."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from dfine_cli.engine.distributed import _free_port, signal_handlers_restored

    b2 = WEIGHTS["hgnetv2-b2"]
    server.put(B0.file, backbone_file())
    server.put(b2.file, b"x", status=500)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="hub",
                          rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{_free_port()}",
                          rdzv_configs={"rank": 0}, max_restarts=0, monitor_interval=0.2,
                          start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=str(tmp_path / "agent")))
    with signal_handlers_restored():  # the agent's handlers must not outlive the launch
        results = elastic_launch(config, fetch_worker)(server.base, str(tmp_path / "home"),
                                                       [B0.name, b2.name])
    assert server.count(B0.file) == 1 and server.count(b2.file) == 1
    assert len(results[0]["calls"]) == 2 and results[1]["calls"] == []
    assert results[0][B0.name] == results[1][B0.name] and Path(str(results[0][B0.name])).is_file()
    for rank in (0, 1):
        assert str(results[rank][b2.name]).startswith("error:") and "HTTP 500" in str(results[rank][b2.name])
