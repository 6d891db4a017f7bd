"""A real HTTP server on 127.0.0.1 for download tests, and small weights files to serve."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from dfine_cli.hub.pretrained import build_backbone_for
from dfine_cli.hub.registry import WEIGHTS
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.presets import preset


@dataclass
class Reply:
    """What the server answers for one path."""

    body: bytes
    status: int = 200
    content_length: int | None = None  # None: the true length; larger: a truncated transfer


@dataclass
class WeightsServer:
    """Serves ``files[path]``; records every request path in ``requests``."""

    port: int = 0
    files: dict[str, Reply] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/release/"

    def put(self, file: str, body: bytes, status: int = 200, content_length: int | None = None) -> None:
        self.files[f"/release/{file}"] = Reply(body, status, content_length)

    def count(self, file: str) -> int:
        return self.requests.count(f"/release/{file}")


@contextmanager
def serve() -> Iterator[WeightsServer]:
    state = WeightsServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            reply = state.files.get(self.path)
            if reply is None:
                self.send_error(404)
                return
            self.send_response(reply.status)
            length = reply.content_length if reply.content_length is not None else len(reply.body)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
            if length != len(reply.body):
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def to_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def backbone_file(name: str = "hgnetv2-b0", seed: int = 0) -> bytes:
    """A state dict in the layout of an ImageNet stage-1 file (backbone keys, no prefix)."""
    torch.manual_seed(seed)
    return to_bytes(build_backbone_for(WEIGHTS[name]).state_dict())


def detector_file(size: str = "n", num_classes: int = 80, seed: int = 0) -> bytes:
    """An official-layout checkpoint ``{"model": state_dict}`` of ``size``."""
    torch.manual_seed(seed)
    model = build_model_from_config(preset(size, num_classes=num_classes))
    return to_bytes({"model": model.state_dict()})
