"""The settings module: embedded defaults, env parsing, and start-up refusing bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from rlhf_site.dbconfig import database_config
from rlhf_site.env import envbool, envint, envlist, envrate, envsecret

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: none of the project's variables, only PATH and friends."""
    keep = {"PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(extra)
    return env


def run_settings(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    script = f"import django; django.setup(); from django.conf import settings; {code}"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "rlhf_site.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_with_no_environment_it_runs_on_sqlite_memory_layer_and_filesystem_broker(tmp_path):
    result = run_settings(
        clean_env(VAR_DIR=str(tmp_path)),
        "print(settings.DATABASES['default']['ENGINE']); print(settings.CHANNEL_LAYERS['default']['BACKEND']);"
        "print(settings.CELERY_BROKER_URL); print(settings.DEBUG)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        "filesystem://",
        "True",
    ]
    assert (tmp_path / "celery" / "queue").is_dir()


def test_redis_url_selects_redis_for_the_channel_layer_and_broker(tmp_path):
    result = run_settings(
        clean_env(VAR_DIR=str(tmp_path), REDIS_URL="redis://127.0.0.1:6379/3"),
        "print(settings.CHANNEL_LAYERS['default']['BACKEND']); print(settings.CELERY_BROKER_URL)",
    )
    assert result.stdout.split() == ["channels_redis.core.RedisChannelLayer", "redis://127.0.0.1:6379/3"]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DEBUG": "false"}, "SECRET_KEY"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"API_THROTTLE_RATE": "lots"}, "API_THROTTLE_RATE"),
        ({"API_MAX_BODY_BYTES": "big"}, "API_MAX_BODY_BYTES"),
        ({"SERVING_TEMPERATURE": "warm"}, "SERVING_TEMPERATURE"),
        ({"CHAT_SIGNUP_ENABLED": "perhaps"}, "CHAT_SIGNUP_ENABLED"),
        ({"DATABASE_POOLER": "sometimes", "DATABASE_URL": "postgres://u@h/db"}, "DATABASE_POOLER"),
        ({"TRAINING_HEARTBEAT_SECONDS": "often"}, "TRAINING_HEARTBEAT_SECONDS"),
        (
            {"TRAINING_SOFT_TIME_LIMIT_SECONDS": "600", "TRAINING_TIME_LIMIT_SECONDS": "600"},
            "TRAINING_TIME_LIMIT_SECONDS",
        ),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, env, variable):
    result = run_settings(clean_env(VAR_DIR=str(tmp_path), **env), "print('started')")
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr.strip().splitlines()[-1]


def test_debug_off_with_a_secret_key_starts(tmp_path):
    result = run_settings(clean_env(VAR_DIR=str(tmp_path), DEBUG="0", SECRET_KEY="s" * 50), "print(settings.DEBUG)")
    assert result.stdout.strip() == "False", result.stderr


def test_the_secret_key_can_come_from_a_file(tmp_path):
    (tmp_path / "key").write_text("from-a-file\n")
    assert envsecret("SECRET_KEY", environ={"SECRET_KEY_FILE": str(tmp_path / "key")}) == "from-a-file"
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FILE"):
        envsecret("SECRET_KEY", environ={"SECRET_KEY_FILE": str(tmp_path / "missing")})


def test_env_helpers_parse_and_refuse():
    assert envbool("X", False, environ={"X": "Yes"}) is True
    assert envbool("X", True, environ={"X": ""}) is True
    assert envint("N", 1, environ={"N": "7"}) == 7
    with pytest.raises(ImproperlyConfigured, match="N=0 is below the minimum of 1"):
        envint("N", 1, minimum=1, environ={"N": "0"})
    assert envlist("L", ["a"], environ={"L": "x, y,,z"}) == ["x", "y", "z"]
    assert envrate("R", "1/s", environ={"R": "off"}) is None
    assert envrate("R", None, environ={"R": "120/min"}) == "120/min"


def test_a_supabase_direct_connection_keeps_server_side_cursors():
    config = database_config("postgresql://postgres:pw@db.abcd.supabase.co:5432/postgres?sslmode=require")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert config["HOST"] == "db.abcd.supabase.co"
    assert config["OPTIONS"]["sslmode"] == "require"
    assert not config.get("DISABLE_SERVER_SIDE_CURSORS", False)


def test_the_supabase_transaction_pooler_turns_server_side_cursors_and_prepares_off():
    config = database_config("postgres://postgres.abcd:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres")
    assert config["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert config["OPTIONS"]["prepare_threshold"] is None
    assert "pool" not in config["OPTIONS"]  # the pooler is the pool
    assert config["CONN_MAX_AGE"] == 0


def test_postgres_gets_a_connection_pool_and_no_persistent_connections():
    config = database_config("postgres://u@127.0.0.1:5432/db", pool_min_size=1, pool_max_size=7)
    assert config["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 7, "timeout": 10}
    assert config["CONN_MAX_AGE"] == 0
    assert "pool" not in database_config("postgres://u@127.0.0.1:5432/db", pool=False)["OPTIONS"]


def test_the_pooler_mode_can_be_forced():
    config = database_config("postgres://u:p@pgbouncer.internal:5432/db", pooler="transaction")
    assert config["DISABLE_SERVER_SIDE_CURSORS"] is True
    session = database_config("postgres://u:p@pooler.supabase.com:6543/db", pooler="session")
    assert not session.get("DISABLE_SERVER_SIDE_CURSORS", False)
