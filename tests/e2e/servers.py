"""Real processes for the end-to-end tests: uvicorn serving the platform, fake OpenAI-compatible model
servers (the boundary), a chat over a real WebSocket, and a webhook receiver."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from django.test import Client

from core.processes import serve_platform
from tests.helpers import child_env

FINAL = re.compile(r'hx-swap-oob="outerHTML"|<article[^>]*data-status="failed"')


@contextmanager
def fake_model_server(
    answer: str = "", *, pieces: list[str] | None = None, hang: bool = False, pause: float = 0.0
) -> Iterator[str]:
    """An OpenAI-compatible server on loopback that streams ``answer`` word by word (or the chunks
    ``pieces``), ``pause`` seconds apart; yields its URL. ``hang``: after them it neither ends the
    stream nor closes it (a long answer still being generated) until the server stops. A client that
    goes away mid-stream ends that stream quietly."""
    chunks = pieces if pieces is not None else [word + " " for word in answer.split(" ")]
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for chunk in chunks:
                    event = {"choices": [{"index": 0, "delta": {"content": chunk}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if pause and stopping.wait(pause):
                        return
                if hang:
                    stopping.wait(60)
                    return
                self.wfile.write(b"data: [DONE]\n\n")
            except OSError:  # the platform closed the stream: it stopped listening
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()


@contextmanager
def platform_server(tmp_path: Path, name: str, *, database: str | None = None, **env: str) -> Iterator[str]:
    """uvicorn serving the platform against the test database (or ``database``, a DATABASE_URL to
    it through a proxy); yields its base URL."""
    child = child_env(VAR_DIR=str(tmp_path / f"var-{name}"), **env)
    with serve_platform(tmp_path / f"{name}.log", env=child, database=database) as base:
        yield base


def session_of(user: object) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def chat(base: str, session: str, conversation_id: object, content: str, timeout: float = 60) -> str:
    """Send one message over the chat WebSocket and return the frame with the finished answer."""
    from websockets.sync.client import connect

    url = base.replace("http://", "ws://") + f"/ws/chat/{conversation_id}/"
    with connect(url, origin=base, additional_headers={"Cookie": f"sessionid={session}"}, open_timeout=30) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"type": "send", "content": content}))
        while True:
            frame = ws.recv(timeout=timeout)
            frame = frame.decode() if isinstance(frame, bytes) else frame
            if FINAL.search(frame):
                return frame
