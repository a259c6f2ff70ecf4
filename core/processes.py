"""Other processes of the platform started from this one: uvicorn serving it against this process's
database (the simulation's server, the end-to-end tests' servers)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """This process's database (the test database in tests) as a DATABASE_URL for a child process."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    password = db["PASSWORD"] or ""
    return f"postgres://{db['USER']}:{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_platform(
    log: Path, *, env: dict[str, str], timeout: float | None = None, database: str | None = None
) -> Iterator[str]:
    """The platform's web server (``bin/web``, as ``bin/run`` starts it; one process) on a free loopback
    port with ``env`` (its whole environment, with this process's database, or ``database`` (a
    DATABASE_URL: the same database through a proxy), and SECRET_KEY over it: sessions and signatures
    made here hold there); yields its base URL once it answers, and stops it on the way out. It must
    answer within ``timeout`` seconds: by default 60 beyond its warm-up's limit (``WEB_WARM_UP_SECONDS``,
    in ``env`` or this process's), during which it loads the live policy and accepts no connection."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(ROOT / "bin" / "web")]
    full_env = {
        **env,
        "WEB_WORKERS": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_PYTHON": sys.executable,
        "DATABASE_URL": database or database_url(),
        "SECRET_KEY": settings.SECRET_KEY,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    timeout = start_limit(env) if timeout is None else timeout
    try:
        deadline = time.monotonic() + timeout
        while not _answers(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The platform's server did not start; its log ({log}):\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_limit(env: dict[str, str]) -> float:
    """Seconds a server started with ``env`` (its whole environment) may take to answer: 60 more than
    its warm-up may (``WEB_WARM_UP_SECONDS`` there, else the setting's default, 60)."""
    return float(env.get("WEB_WARM_UP_SECONDS") or 60) + 60


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/accounts/login/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
