"""What the benchmarks share: a database of their own on the local PostgreSQL, and Django set up on it."""

from __future__ import annotations

import os
import sys
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
