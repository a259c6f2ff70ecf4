"""Behind a transaction pooler (Supabase on port 6543, pgbouncer in transaction mode) each transaction
may run on another server connection, so nothing may leave state on a connection beyond one
transaction: no session advisory locks (``pg_advisory_xact_lock`` is the safe kind), no ``LISTEN``, no
``SET`` other than ``SET LOCAL`` (pgbouncer restores only a few parameters, e.g. TimeZone, per client;
a ``SET statement_timeout`` would reach other clients). The PostgreSQL tests run through pgbouncer in
CI; this keeps the source from growing such a statement in code those tests do not reach."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "feedback", "models_registry", "training", "rlhf_site")
SESSION_STATE = re.compile(
    r"pg_(try_)?advisory_lock(_shared)?\s*\("  # session-level advisory locks
    r"|[\"']\s*(?-i:LISTEN)\s+[\"\w]"  # notifications arrive on one server connection (SQL in capitals)
    r"|[\"']\s*SET\s+(SESSION\s+)?(?!LOCAL\b)(TIME\s+ZONE\b|\w+\s*(=|\bTO\b))",  # a SET outliving its transaction
    re.IGNORECASE,
)


def offenders(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if SESSION_STATE.search(line)]


@pytest.mark.parametrize(
    "line",
    [
        'cursor.execute("SELECT pg_advisory_lock(%s)", [42])',
        "cursor.execute('SELECT pg_try_advisory_lock(1)')",
        'cursor.execute("LISTEN model_versions")',
        'cursor.execute("SET statement_timeout = 1000")',
        "cursor.execute('set session lock_timeout to 5')",
        "cursor.execute(\"SET TIME ZONE 'Asia/Tokyo'\")",
    ],
)
def test_the_check_catches_connection_state(line):
    assert offenders(line) == [line]


@pytest.mark.parametrize(
    "line",
    [
        'cursor.execute("SELECT pg_advisory_xact_lock(%s)", [42])',
        'cursor.execute("SET LOCAL statement_timeout = 1000")',
        'hint="Set SECRET_KEY (or SECRET_KEY_FILE) so that every process shares one key."',
        '"Listen to native speakers."',
    ],
)
def test_the_check_lets_transaction_scoped_statements_pass(line):
    assert offenders(line) == []


def test_no_code_leaves_state_on_a_pooled_connection():
    found = {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := offenders(path.read_text()))
    }
    assert found == {}
