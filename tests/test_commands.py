from __future__ import annotations

from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_demo_user_gets_a_printed_password_once(db, monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    first = run("ensure_demo_user")
    password = first.split("password: ")[1].split()[0]
    user = get_user_model().objects.get(username="demo")
    assert user.is_superuser
    assert user.check_password(password)

    second = run("ensure_demo_user")
    assert password not in second
    user.refresh_from_db()
    assert user.check_password(password)


def test_the_demo_password_can_come_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "chosen-demo-pass")
    monkeypatch.setenv("DEMO_USERNAME", "operator1")
    assert "chosen-demo-pass" not in run("ensure_demo_user")
    assert get_user_model().objects.get(username="operator1").check_password("chosen-demo-pass")


def test_drf_create_token_gives_a_working_api_key(alice, answer):
    from rest_framework.test import APIClient

    key = run("drf_create_token", "alice").split()[2]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.post("/api/assistant/feedback", {"message_id": str(answer.id), "rating": 3}, format="json")
    assert response.status_code == 201
    assert response.json()["satisfaction"]["mean_rating"] == 3.0
