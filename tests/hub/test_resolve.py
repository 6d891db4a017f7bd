"""Names wherever a checkpoint is accepted: local paths win, names download, hf: ids."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dfine_cli.checkpoints import read_checkpoint
from dfine_cli.detector import Detector
from dfine_cli.errors import CheckpointError, DependencyError, UsageError
from dfine_cli.hub import is_weights_name, resolve_weights
from dfine_cli.obj365_names import OBJ365_HEAD_NAMES
from tests.hub.weights_server import detector_file


def test_local_path_wins_over_a_name(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("dfine-n-coco").write_bytes(b"local")
    assert resolve_weights("dfine-n-coco") == Path("dfine-n-coco")
    assert server.requests == []


def test_unknown_bare_word_names_the_list(server):
    with pytest.raises(CheckpointError, match="neither a file nor a known weights name"):
        resolve_weights("dfine-q-coco")
    assert resolve_weights("missing/model.pth") == Path("missing/model.pth")
    assert is_weights_name("dfine-s-obj365") and is_weights_name("hf:a/b") and not is_weights_name("x.pth")


def test_names_resolve_in_read_checkpoint_and_detector(server):
    server.put("dfine_n_coco.pth", detector_file("n", 80))
    ckpt = read_checkpoint("dfine-n-coco")
    assert ckpt.info.config.name == "n" and ckpt.info.class_names[0] == "person"
    det = Detector.from_pretrained("dfine-n-coco")
    assert det.class_names[:3] == ["person", "bicycle", "car"]
    assert Detector.from_checkpoint("DFINE-N-COCO").info.num_classes == 80
    assert server.count("dfine_n_coco.pth") == 1


def test_objects365_names_come_with_the_name(server):
    server.put("dfine_s_obj365.pth", detector_file("s", 366))
    ckpt = read_checkpoint("dfine-s-obj365")
    assert ckpt.info.class_names == list(OBJ365_HEAD_NAMES)
    assert ckpt.info.category_ids[1] == 1 and ckpt.info.class_names[1] == "Person"


def test_from_pretrained_rejects_other_names():
    with pytest.raises(UsageError, match="unknown pretrained detector"):
        Detector.from_pretrained("hgnetv2-b0")
    with pytest.raises(UsageError, match="unknown pretrained detector"):
        Detector.from_pretrained("model.pth")


def test_cli_commands_take_names(server, tmp_path):
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    server.put("dfine_n_coco.pth", detector_file("n", 80))
    res = CliRunner().invoke(app, ["info", "dfine-n-coco", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["size"] == "n" and info["num_classes"] == 80


def test_cli_offline_exit_6():
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    res = CliRunner().invoke(app, ["info", "dfine-s-coco"])  # conftest: closed loopback port
    assert res.exit_code == 6
    assert "could not download dfine-s-coco from http://127.0.0.1:9/" in res.output


# -- hf: ids through huggingface_hub, against a loopback imitation of the hub's API -----------


def _hf_files(tmp_path: Path) -> dict[str, bytes]:
    pytest.importorskip("transformers")
    from transformers import DFineForObjectDetection

    from tests.models.hf_helpers import make_hf_dfine_config

    config = make_hf_dfine_config("n", num_classes=2)
    config.id2label = {0: "cell", 1: "platelet"}
    config.label2id = {"cell": 0, "platelet": 1}
    folder = tmp_path / "hf-src"
    DFineForObjectDetection(config).save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".json", ".safetensors")}


def _hf_server(files: dict[str, bytes], repo: str, requests: list[str]) -> ThreadingHTTPServer:
    commit = "0123456789abcdef0123456789abcdef01234567"

    class Handler(BaseHTTPRequestHandler):
        def _file(self) -> bytes | None:
            prefix = f"/{repo}/resolve/"
            if not self.path.startswith(prefix):
                return None
            name = self.path[len(prefix):].split("/", 1)[-1]
            return files.get(name)

        def _headers(self, body: bytes) -> None:
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_HEAD(self) -> None:
            requests.append("HEAD " + self.path)
            body = self._file()
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self._headers(body)

        def do_GET(self) -> None:
            requests.append("GET " + self.path)
            if self.path.startswith(f"/api/models/{repo}/tree/"):
                body = json.dumps([{"type": "file", "path": n, "size": len(b),
                                    "oid": hashlib.sha1(b).hexdigest()} for n, b in files.items()]).encode()
            elif self.path.startswith(f"/api/models/{repo}"):
                body = json.dumps({"id": repo, "sha": commit,
                                   "siblings": [{"rfilename": n} for n in files]}).encode()
            else:
                body = b""
            if body:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = self._file()
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self._headers(data)
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_hf_ids_download_through_huggingface_hub(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    files = _hf_files(tmp_path)
    requests: list[str] = []
    server = _hf_server(files, "org/dfine-tiny", requests)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
        ckpt = read_checkpoint("hf:org/dfine-tiny")
        assert ckpt.info.class_names == ["cell", "platelet"] and ckpt.info.config.name == "n"
        assert resolve_weights("hf:org/dfine-tiny").is_relative_to(tmp_path / "home" / "huggingface")
        assert any(r.startswith("GET /org/dfine-tiny/resolve/") for r in requests)
    finally:
        server.shutdown()
        server.server_close()


def test_hf_failure_and_missing_package(monkeypatch):
    with pytest.raises(DependencyError, match=r"could not download hf:org/none from http://127.0.0.1:9/org/none"):
        resolve_weights("hf:org/none")
    with pytest.raises(UsageError, match="hf:org/name"):
        resolve_weights("hf:justone")
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(DependencyError, match=r"pip install 'dfine\[hub\]'"):
        resolve_weights("hf:org/x")
