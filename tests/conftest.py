"""The named world of the tests: alice owns things, bob is another user; API clients for both.

Service-bound tests carry ``@pytest.mark.postgres`` or ``@pytest.mark.redis``. Without the service
they are skipped with a reason on a laptop, and fail in CI (``CI`` set), where the service must run.
"""

from __future__ import annotations

import os

import pytest
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from models_registry.models import ModelVersion
from tests.factories import AssistantMessageFactory, ConversationFactory, ModelVersionFactory, UserFactory
from tests.helpers import Bootstrapped, bootstrap_for_tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _redis_problem() -> str | None:
    from django.conf import settings

    if not settings.REDIS_URL:
        return "REDIS_URL is not set"
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis at REDIS_URL is unreachable: {exc}"
    return None


def _postgres_problem() -> str | None:
    if connection.vendor != "postgresql":
        return f"DATABASE_URL does not select PostgreSQL (tests run on {connection.vendor})"
    return None


def _browser_problem() -> str | None:
    import shutil

    if not (os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")):
        return "no chromium (apt-get install chromium, or set CHROMIUM_PATH)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed"
    return None


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    checks = (("postgres", _postgres_problem), ("redis", _redis_problem), ("browser", _browser_problem))
    for marker, check in checks:
        if request.node.get_closest_marker(marker) is None:
            continue
        problem = check()
        if problem is None:
            continue
        if IN_CI:
            pytest.fail(f"{marker} is required in CI: {problem}")
        pytest.skip(f"needs {marker}: {problem}")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_throttle_cache() -> None:
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def alice_session(alice):
    """The value of a session cookie signed in as alice (for the chat socket)."""
    client = Client()
    client.force_login(alice)
    return client.cookies["sessionid"].value


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def operator(db):
    return UserFactory(username="operator", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client_(operator) -> Client:
    """The operator (a superuser) logged in to the admin."""
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def live_models(db) -> tuple[ModelVersion, ModelVersion]:
    """A live policy and a live reward model with stand-in files: enough to create training runs."""
    return (
        ModelVersionFactory(kind="policy", status="live", checksums={"config.json": "0" * 64}),
        ModelVersionFactory(kind="reward", status="live", checksums={"config.json": "0" * 64}),
    )


@pytest.fixture
def api(alice) -> APIClient:
    """Alice's API client, authenticated with her DRF token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


@pytest.fixture
def bob_api(bob) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    return client


@pytest.fixture
def conversation(alice):
    return ConversationFactory(user=alice)


@pytest.fixture
def answer(conversation):
    """Alice's assistant answer with three steps."""
    return AssistantMessageFactory(conversation=conversation)


@pytest.fixture(scope="session")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Bootstrapped:
    """The session's bootstrapped models (trained once, read-only: a test that tampers must copy)."""
    return bootstrap_for_tests(str(tmp_path_factory.getbasetemp() / "bootstrap"))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Before the test database is dropped, end the sessions that would stop PostgreSQL from dropping
    it: the connection pools' idle connections and connections left open in other threads (an async
    test's ``sync_to_async`` ORM calls run in a worker thread that keeps its connection, and, behind a
    transaction pooler such as pgbouncer, the pooler's server connections). From the maintenance
    database, so that no connection of this process's own stays on the test database either."""
    yield
    from django.db import connection, connections

    with django_db_blocker.unblock():
        connections.close_all()
        if connection.vendor == "postgresql":
            with connection._nodb_cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    [connection.settings_dict["NAME"]],
                )
        for wrapper in connections.all(initialized_only=True):
            if getattr(wrapper, "pool", None) is not None:
                wrapper.close_pool()


@pytest.fixture
def broker_unreachable():
    """Celery's broker moved to a loopback port nothing listens on (a broker that went away): sends
    fail as they would, with kombu's OperationalError, after its connection retries. Yields ``back``,
    which puts the broker back (also done after the test)."""
    from celery import current_app

    from core.processes import free_port

    url = current_app.conf.broker_url

    def point_at(broker_url: str) -> None:
        current_app.conf.broker_url = broker_url
        # The connection and producer pools hold the old address (what Celery resets after a fork).
        current_app._pool = None
        current_app.amqp._producer_pool = None

    point_at(f"redis://127.0.0.1:{free_port()}/0")
    yield lambda: point_at(url)
    point_at(url)
