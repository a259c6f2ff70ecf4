"""The settings module: embedded defaults, env parsing, and start-up refusing bad values."""

from __future__ import annotations

import os
import re
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
        "False",
    ]
    assert (tmp_path / "celery" / "queue").is_dir()


def test_with_no_secret_key_one_is_generated_once_and_kept_private(tmp_path):
    first = run_settings(clean_env(VAR_DIR=str(tmp_path)), "print(settings.SECRET_KEY)")
    second = run_settings(clean_env(VAR_DIR=str(tmp_path)), "print(settings.SECRET_KEY)")
    other = run_settings(clean_env(VAR_DIR=str(tmp_path / "elsewhere")), "print(settings.SECRET_KEY)")

    key = first.stdout.strip()
    assert len(key) >= 50, first.stderr
    assert second.stdout.strip() == key
    assert other.stdout.strip() != key
    assert (tmp_path / "secret_key").read_text().strip() == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert "insecure" not in key


def test_a_secret_key_from_the_environment_wins_and_nothing_is_generated(tmp_path):
    result = run_settings(clean_env(VAR_DIR=str(tmp_path), SECRET_KEY="k" * 50), "print(settings.SECRET_KEY)")
    assert result.stdout.strip() == "k" * 50
    assert not (tmp_path / "secret_key").exists()


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "pr0duction-" + "x7Qz" * 12,
    "ALLOWED_HOSTS": "rlhf.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://rlhf.example.com",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto:https",
    "METRICS_TOKEN": "scrape-token",
}


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_debug_off_and_the_production_variables(tmp_path):
    result = check_deploy(clean_env(VAR_DIR=str(tmp_path), **PRODUCTION))
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_names_what_a_bare_install_lacks(tmp_path):
    result = check_deploy(clean_env(VAR_DIR=str(tmp_path)))
    assert result.returncode != 0
    found = set(re.findall(r"\(([\w.]+\.W\d+)\)", result.stderr))
    assert found == {
        "rlhf_site.W001",
        "rlhf_site.W002",
        "security.W004",
        "security.W008",
        "security.W012",
        "security.W016",
    }


def test_the_security_variables_reach_django(tmp_path):
    result = run_settings(
        clean_env(VAR_DIR=str(tmp_path), **PRODUCTION),
        "print(settings.SECURE_PROXY_SSL_HEADER, settings.SECURE_HSTS_SECONDS, settings.SESSION_COOKIE_SECURE)",
    )
    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https') 31536000 True", result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "rlhf.example.com"])
def test_bin_run_refuses_debug_on_a_non_loopback_host(tmp_path, host):
    result = subprocess.run(
        [str(ROOT / "bin" / "run")],
        env=clean_env(VAR_DIR=str(tmp_path), HOST=host, DEBUG="true"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"refusing to serve on HOST={host} with DEBUG on" in result.stderr
    assert not (tmp_path / "db.sqlite3").exists()


@pytest.mark.parametrize("workers", ["0", "two", "-1"])
def test_bin_run_refuses_a_web_workers_that_is_not_a_count(tmp_path, workers):
    result = subprocess.run(
        [str(ROOT / "bin" / "run")],
        env=clean_env(VAR_DIR=str(tmp_path), WEB_WORKERS=workers),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"WEB_WORKERS={workers} is not a whole number >= 1" in result.stderr
    assert not (tmp_path / "db.sqlite3").exists()


def test_redis_url_selects_redis_for_the_channel_layer_and_broker(tmp_path):
    result = run_settings(
        clean_env(VAR_DIR=str(tmp_path), REDIS_URL="redis://127.0.0.1:6379/3"),
        "print(settings.CHANNEL_LAYERS['default']['BACKEND']); print(settings.CELERY_BROKER_URL)",
    )
    assert result.stdout.split() == ["channels_redis.core.RedisChannelLayer", "redis://127.0.0.1:6379/3"]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"SECURE_PROXY_SSL_HEADER": "https"}, "SECURE_PROXY_SSL_HEADER"),
        ({"SECURE_HSTS_SECONDS": "a year"}, "SECURE_HSTS_SECONDS"),
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"API_THROTTLE_RATE": "lots"}, "API_THROTTLE_RATE"),
        ({"API_MAX_BODY_BYTES": "big"}, "API_MAX_BODY_BYTES"),
        ({"SERVING_TEMPERATURE": "warm"}, "SERVING_TEMPERATURE"),
        ({"CHAT_SIGNUP_ENABLED": "perhaps"}, "CHAT_SIGNUP_ENABLED"),
        ({"DATABASE_POOLER": "sometimes", "DATABASE_URL": "postgres://u@h/db"}, "DATABASE_POOLER"),
        ({"TRAINING_HEARTBEAT_SECONDS": "often"}, "TRAINING_HEARTBEAT_SECONDS"),
        ({"TRAINING_PROCESSES": "0"}, "TRAINING_PROCESSES"),
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
    assert config["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 7, "timeout": 2.0, "reconnect_timeout": 5.0}
    assert config["CONN_MAX_AGE"] == 0
    assert "pool" not in database_config("postgres://u@127.0.0.1:5432/db", pool=False)["OPTIONS"]


def test_the_pooler_mode_can_be_forced():
    config = database_config("postgres://u:p@pgbouncer.internal:5432/db", pooler="transaction")
    assert config["DISABLE_SERVER_SIDE_CURSORS"] is True
    session = database_config("postgres://u:p@pooler.supabase.com:6543/db", pooler="session")
    assert not session.get("DISABLE_SERVER_SIDE_CURSORS", False)


def test_the_debug_page_masks_passwords_inside_urls(rf, settings):
    import secrets
    import sys

    from django.views.debug import technical_500_response

    class Passwords(list):  # made up here, and hidden from the page's own view of this frame's locals
        def __repr__(self) -> str:
            return "<passwords>"

    pw = Passwords(secrets.token_hex(6) for _ in range(5))
    settings.DEBUG = True
    settings.REDIS_URL = f"redis://:{pw[0]}@redis.internal:6379/0"
    settings.CELERY_BROKER_URL = f"amqp://rabbit:{pw[1]}@mq.internal:5672//"
    settings.CACHES = {"default": {"BACKEND": "x", "LOCATION": f"redis://cache:{pw[2]}@cache.internal:6379"}}
    database_url = f"postgres://app:{pw[3]}@db.internal:5432/rlhf"  # a local variable of the failing frame
    request = rf.get("/boom", HTTP_X_UPSTREAM=f"http://proxy:{pw[4]}@proxy.internal")
    try:
        raise RuntimeError(f"cannot reach {database_url.split('@')[1]}")
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()

    for password in pw:
        assert password not in page
    assert "redis://:********************@redis.internal:6379/0" in page
    assert "amqp://rabbit:********************@mq.internal" in page
    assert "postgres://app:********************@db.internal" in page


def test_a_check_warns_when_the_threads_can_hold_more_connections_than_the_pool(settings):
    from rlhf_site.checks import threads_fit_the_pool

    settings.DATABASES = {"default": {**settings.DATABASES["default"], "OPTIONS": {"pool": {"max_size": 20}}}}
    settings.HTTP_THREADS, settings.ASYNC_DB_THREADS = 10, 10
    assert threads_fit_the_pool(None) == []
    settings.ASYNC_DB_THREADS = 16
    [warning] = threads_fit_the_pool(None)
    assert warning.id == "rlhf_site.W003"
    assert "26, above DATABASE_POOL_MAX_SIZE (20)" in warning.msg
