"""A database that cannot be reached gives a 503 in the one error shape with ``Retry-After``, never a
500, whether the error is raised inside a DRF view or outside one; and the database settings that
make a request fail fast and the service come back (the drill: tests/e2e/test_fault_drills.py)."""

from __future__ import annotations

import pytest
from django.db import InterfaceError, OperationalError
from django.test import Client

from feedback.models import Feedback
from rlhf_site.dbconfig import POOL_RECONNECT_TIMEOUT, database_config
from tests.test_feedback_api import URL, assert_error, post


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_a_database_error_in_the_api_is_a_503_with_retry_after(api, answer, monkeypatch, error):
    def unreachable(**kwargs):
        raise error("connection failed: server closed the connection unexpectedly")

    monkeypatch.setattr("feedback.services.feedback_upsert", unreachable)
    response = post(api, {"message_id": str(answer.id), "thumbs": "up"})
    body = assert_error(response, 503, "database_unavailable")
    assert body["message"].startswith("The database cannot be reached right now; nothing was changed.")
    assert response["Retry-After"] == "5"
    assert not Feedback.objects.exists()


def test_a_database_error_outside_drf_is_a_503_too(alice, monkeypatch):
    """The login page queries nothing DRF guards: Django's 500 handler sees the error and answers 503."""

    def unreachable(*args, **kwargs):
        raise OperationalError("couldn't get a connection after 2.00 sec")

    monkeypatch.setattr("feedback.views.selectors.conversation_list", unreachable)
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    page = client.get("/")
    assert page.status_code == 503
    assert page["Retry-After"] == "5"
    assert "database cannot be reached" in page.content.decode()


def test_a_database_error_raised_by_middleware_under_api_is_the_json_503(alice, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OperationalError("connection refused")

    # The session is read by AuthenticationMiddleware, before any view: DRF is not involved.
    monkeypatch.setattr("django.contrib.sessions.backends.db.SessionStore.load", unreachable)
    client = Client(raise_request_exception=False)
    client.cookies["sessionid"] = "x" * 32
    response = client.get(URL.replace("feedback", "satisfaction"))
    assert_error(response, 503, "database_unavailable")
    assert response["Retry-After"] == "5"


def test_postgres_fails_fast_and_replaces_broken_connections():
    config = database_config("postgres://u@127.0.0.1:5432/db", pool_timeout=1.5, connect_timeout=4)
    assert config["OPTIONS"]["connect_timeout"] == 4
    assert config["CONN_HEALTH_CHECKS"] is True  # Django gives the pool a check on each checkout
    assert config["OPTIONS"]["pool"]["timeout"] == 1.5
    assert config["OPTIONS"]["pool"]["reconnect_timeout"] == POOL_RECONNECT_TIMEOUT
    # Without a pool (a transaction pooler) the connect timeout is what bounds a request.
    pooler = database_config("postgres://u@127.0.0.1:6543/db")
    assert "pool" not in pooler["OPTIONS"]
    assert pooler["OPTIONS"]["connect_timeout"] == 3
    # One given in the URL wins.
    assert database_config("postgres://u@h:5432/db?connect_timeout=9")["OPTIONS"]["connect_timeout"] == 9
