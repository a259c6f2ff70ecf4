"""Turn ``DATABASE_URL`` into Django's ``DATABASES['default']``.

Supabase gives three kinds of connection string: the direct one (port 5432), the session pooler
(port 5432 on ``*.pooler.supabase.com``) and the transaction pooler (port 6543). A transaction
pooler hands each transaction to any server connection, so server-side cursors (which live across
transactions) and prepared statements (which live on one server connection) must be off.

Under ASGI, Django runs each sync view in a fresh thread and connections belong to threads, so
persistent connections (CONN_MAX_AGE > 0) are never reused: they pile up until PostgreSQL refuses
new clients (measured in bench/feedback_load.py). Hence, for PostgreSQL, a psycopg connection pool
per process with CONN_MAX_AGE 0, as Django's docs advise for ASGI.

When the database is unreachable a request must fail fast (503 with ``Retry-After``, see
``rlhf_site.errors``) and the service must come back on its own within seconds of the database
returning (the fault drills in ``tests/e2e/test_fault_drills.py``). Hence: a ``connect_timeout``
(a blackholed server otherwise holds a connect for minutes); a pool timeout of seconds, the longest
a request waits for a connection; health checks (``CONN_HEALTH_CHECKS``, which Django turns into the
pool's ``check``), so a pooled connection broken by the outage is replaced instead of failing a
request after the database is back; and a short ``reconnect_timeout``: the pool's reconnection
backs off exponentially (1, 2, 4, 8 s, ...), so after an outage of 10 s its next try could be 5-15 s
away; giving up after a few seconds instead lets the next request start a fresh attempt at once.
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
# Seconds the pool keeps retrying one reconnection (with backoff) before it gives up; the next request
# that finds no connection starts a new attempt straight away.
POOL_RECONNECT_TIMEOUT = 5.0


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
    url: str,
    *,
    pooler: str = "auto",
    pool_min_size: int = 2,
    pool_max_size: int = 10,
    pool: bool = True,
    pool_timeout: float = 2.0,
    connect_timeout: int = 3,
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
    options.setdefault("connect_timeout", connect_timeout)  # one given in the URL wins
    config["CONN_HEALTH_CHECKS"] = True
    if transaction_pooler:
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        options["prepare_threshold"] = None
    elif pool:
        # The external pooler, where there is one, is the pool; otherwise each process keeps its own.
        options["pool"] = {
            "min_size": pool_min_size,
            "max_size": pool_max_size,
            "timeout": pool_timeout,
            "reconnect_timeout": POOL_RECONNECT_TIMEOUT,
        }
    return config
