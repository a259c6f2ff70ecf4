"""Turn ``DATABASE_URL`` into Django's ``DATABASES['default']``.

Supabase gives three kinds of connection string: the direct one (port 5432), the session pooler
(port 5432 on ``*.pooler.supabase.com``) and the transaction pooler (port 6543). A transaction
pooler hands each transaction to any server connection, so server-side cursors (which live across
transactions) and prepared statements (which live on one server connection) must be off.

Under ASGI, Django runs each sync view in a fresh thread and connections belong to threads, so
persistent connections (CONN_MAX_AGE > 0) are never reused: they pile up until PostgreSQL refuses
new clients (measured in bench/feedback_load.py). Hence, for PostgreSQL, a psycopg connection pool
per process with CONN_MAX_AGE 0, as Django's docs advise for ASGI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

SUPABASE_TRANSACTION_POOLER_PORT = 6543
POOLER_MODES = ("auto", "transaction", "session", "none")


def sqlite_config(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # A file, not memory, for tests too: worker processes started by the tests must see it. One
        # per test process, so two test runs on one machine do not share it.
        "TEST": {"NAME": str(path.with_name(f"test_{os.getpid()}_{path.name}"))},
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
    }


def database_config(
    url: str, *, pooler: str = "auto", pool_min_size: int = 2, pool_max_size: int = 10, pool: bool = True
) -> dict[str, Any]:
    if pooler not in POOLER_MODES:
        raise ImproperlyConfigured(f"DATABASE_POOLER={pooler!r} is not one of {', '.join(POOLER_MODES)}.")
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=0))
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL this project understands: {exc}") from None
    engine = config.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        return sqlite_config(Path(config["NAME"]))
    if engine != "django.db.backends.postgresql":
        raise ImproperlyConfigured(f"DATABASE_URL selects {engine}; only PostgreSQL and SQLite are supported.")
    port = urlsplit(url).port
    transaction_pooler = pooler == "transaction" or (pooler == "auto" and port == SUPABASE_TRANSACTION_POOLER_PORT)
    options = config.setdefault("OPTIONS", {})
    if transaction_pooler:
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        options["prepare_threshold"] = None
    elif pool:
        # The external pooler, where there is one, is the pool; otherwise each process keeps its own.
        options["pool"] = {"min_size": pool_min_size, "max_size": pool_max_size, "timeout": 10}
    return config
