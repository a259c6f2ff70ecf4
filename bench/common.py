"""What the benchmarks share: a database of their own on the local PostgreSQL, and Django set up on it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_SECRET_KEY = "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"


def ensure_database(pg: str, db: str) -> None:
    """Create ``db`` on the server at ``pg`` (``postgres://user@host:port``) if it is missing."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{pg.rstrip('/')}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))


def setup_django(db_url: str, **env: str) -> None:
    """Configure this process for the project on ``db_url`` (DEBUG off, quiet logs), then ``django.setup()``."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="rlhf_site.settings",
        DATABASE_URL=db_url,
        DEBUG="0",
        LOG_LEVEL="WARNING",
        SECRET_KEY=os.environ.get("SECRET_KEY", BENCH_SECRET_KEY),
        **env,
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def login_session(user: object) -> str:
    """A Django session logged in as ``user`` (what a browser's ``sessionid`` cookie names)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)  # type: ignore[attr-defined]
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()  # type: ignore[attr-defined]
    session.create()
    assert session.session_key is not None
    return session.session_key


def processes() -> Iterator[tuple[Path, str, list[str]]]:
    """Each process now: its ``/proc/<pid>`` folder, its command name and the fields of its ``stat``
    after the name (``fields[2]``: its process group; ``fields[11:15]``: utime stime cutime cstime)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        yield stat.parent, text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def cpu_seconds_by_group(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process group in ``groups`` (name: process group id) and of
    PostgreSQL's processes (``postgres``). Reaped children count for their parent (cutime, cstime), so
    PostgreSQL backends that already exited still count, through the postmaster."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(groups, 0.0) | {"postgres": 0.0}
    by_group = {gid: name for name, gid in groups.items()}
    for _, comm, fields in processes():
        seconds = sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
        if int(fields[2]) in by_group:
            totals[by_group[int(fields[2])]] += seconds
        elif comm.startswith("postgres"):
            totals["postgres"] += seconds
    return totals
