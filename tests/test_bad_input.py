"""No input gives a 500: the reproductions of issue 8 point 3, each answered in the one error shape
and changing nothing."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core import jsonsafe
from feedback.models import Feedback
from models_registry.models import ModelVersion
from rlhf_site.login import LoginForm
from tests.factories import UserFactory
from tests.test_feedback_api import assert_error
from training.ml.config import ConfigError, validate_config
from training.models import Cycle, TrainingRun

FEEDBACK = "/api/assistant/feedback"
SURROGATE = "\\ud800"  # as it travels in JSON text: a lone high surrogate once decoded


def raw_post(client: Client, url: str, body: str | bytes, content_type: str = "application/json"):
    # client.post would encode the body with the declared charset itself (and fail on rot13).
    return client.generic("POST", url, body.encode() if isinstance(body, str) else body, content_type=content_type)


@pytest.fixture
def trainer(db) -> APIClient:
    user = UserFactory(username="trainer")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_trainingrun", "start_trainingrun"]))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


# --- Charsets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["rot13", "no-such-charset", "utf-7", "unicode_escape"])
def test_a_json_body_in_an_unsupported_charset_is_a_415(api, answer, charset):
    body = json.dumps({"message_id": str(answer.id), "thumbs": "up"})
    error = assert_error(
        raw_post(api, FEEDBACK, body, f"application/json; charset={charset}"), 415, "unsupported_charset"
    )
    assert error["message"] == f"The charset {charset!r} is not supported; send UTF-8."
    assert not Feedback.objects.exists()


def test_a_declared_utf8_or_latin1_charset_is_fine(api, answer):
    body = json.dumps({"message_id": str(answer.id), "thumbs": "up"})
    assert raw_post(api, FEEDBACK, body, "application/json; charset=UTF-8").status_code == 201
    assert raw_post(api, FEEDBACK, body, "application/json; charset=latin-1").status_code == 200
    assert Feedback.objects.get().thumbs == "up"


def test_a_login_form_in_utf7_cannot_smuggle_a_surrogate(db):
    # "+2AA-" is "\ud800" in UTF-7; Django would decode the form with the declared charset.
    response = raw_post(
        Client(), "/accounts/login/", "username=%2B2AA-&password=x", "application/x-www-form-urlencoded; charset=utf-7"
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_charset"


# --- Nesting, surrogates, NaN in JSON bodies ----------------------------------------------------------


def test_json_nested_deeper_than_the_parser_can_go_is_a_400(api, answer):
    deep = "[" * 30_000 + "]" * 30_000  # under the 64 KiB cap; deeper than Python's recursion limit
    body = f'{{"message_id": "{answer.id}", "comment": {deep}}}'
    error = assert_error(raw_post(api, FEEDBACK, body), 400, "parse_error")
    assert error["message"] == f"The request body nests deeper than {jsonsafe.MAX_DEPTH} levels."
    assert not Feedback.objects.exists()


def test_json_nested_deeper_than_the_cap_is_a_400(trainer, live_models):
    config = {"epochs": 1}
    for _ in range(40):
        config = {"x": config}
    response = trainer.post("/api/training/runs", {"kind": "dpo", "config": config}, format="json")
    assert_error(response, 400, "parse_error")
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        # a value that would be stored
        '{{"message_id": "{id}", "comment": "a{s}b"}}',
        # a value that is echoed in the error message ('"\ud800" is not a valid choice.')
        '{{"message_id": "{id}", "thumbs": "{s}"}}',
        # an unknown key, echoed as the field's name
        '{{"message_id": "{id}", "thumbs": "up", "{s}": 1}}',
        # a list item
        '{{"message_id": "{id}", "tags": ["clear", "{s}"]}}',
    ],
    ids=["value", "echoed-value", "unknown-key", "list-item"],
)
def test_a_lone_surrogate_anywhere_in_the_body_is_a_400(api, answer, body):
    response = raw_post(api, FEEDBACK, body.format(id=answer.id, s=SURROGATE))
    error = assert_error(response, 400, "parse_error")
    assert "lone surrogate" in error["message"]
    response.content.decode("utf-8")  # the answer itself is valid UTF-8
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("metrics", [{"accuracy\u0000": 1}, {"note": "a\u0000b"}, {"nested": [{"x": "\u0000"}]}])
def test_a_nul_in_a_stored_json_object_is_a_field_error(operator, settings, metrics):
    # PostgreSQL's jsonb cannot hold \u0000: this was a 500 from the insert.
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["models.example.com"]
    client = APIClient()
    client.force_authenticate(operator)
    body = {"base_url": "https://models.example.com/v1", "model_name": "m", "metrics": metrics}
    error = assert_error(client.post("/api/registry/versions", body, format="json"), 400, field="metrics")
    assert error["fields"]["metrics"] == ["Must not contain NUL characters (\\u0000); they cannot be stored."]
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_a_non_finite_number_in_a_training_config_is_refused(trainer, live_models, number):
    response = raw_post(trainer, "/api/training/runs", f'{{"kind": "dpo", "config": {{"beta": {number}}}}}')
    error = assert_error(response, 400, "parse_error")
    assert error["message"] in (
        f"The request body holds {number}, which is not a JSON number.",
        f"The request body holds a number out of range ({number}).",
    )
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_training_config_refuses_non_finite_numbers(value):
    with pytest.raises(ConfigError) as caught:
        validate_config("dpo", {"beta": value, "epochs": value})
    assert caught.value.fields["beta"] == [f"Must be a finite number; got {value}."]
    assert caught.value.fields["epochs"] == [f"Must be a finite number; got {value}."]


@pytest.mark.parametrize("text", ['{"beta": NaN}', '{"learning_rate": Infinity}', '{"beta": 1e999}'])
def test_the_admin_start_form_refuses_nan_and_infinity(admin_client_, live_models, text):
    response = admin_client_.post("/admin/training/trainingrun/start/", {"kind": "dpo", "config": text})
    assert response.status_code == 200
    [message] = response.context["form"].errors["config"]
    assert message.startswith("The config holds")
    assert not TrainingRun.objects.exists()


def test_the_admin_cycle_form_refuses_nan(admin_client_, live_models):
    response = admin_client_.post(
        "/admin/training/cycle/start/", {"policy": "dpo", "config": '{"reward": {"beta": NaN}}'}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["config"] == ["The config holds NaN, which is not a JSON number."]
    assert not Cycle.objects.exists()


# --- Query parameters that were silently ignored ------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-1", "201", "1.5", "²"])
def test_an_invalid_page_size_is_a_400(api, value):
    error = assert_error(api.get("/api/assistant/conversations", {"page_size": value}), 400, field="page_size")
    assert error["fields"]["page_size"] == ["Must be a whole number from 1 to 200."]


def test_a_valid_page_size_is_used(api, conversation):
    response = api.get("/api/assistant/conversations", {"page_size": "1"})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize("name", ["status", "kind"])
def test_an_unknown_training_run_filter_is_a_400(trainer, name):
    error = assert_error(trainer.get("/api/training/runs", {name: "bogus"}), 400, field=name)
    assert error["fields"][name][0].startswith("Must be one of ")


def test_a_unicode_digit_is_not_a_version_number(operator):
    client = APIClient()
    client.force_authenticate(operator)
    assert_error(client.get("/api/registry/events", {"version": "²"}), 400, field="version")
    assert not ModelVersion.objects.exists()


# --- The login forms --------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("field", ["username", "password"])
def test_the_login_form_refuses_a_surrogate_instead_of_failing(alice, rf, field):
    data = {"username": "alice", "password": "secret", field: "al\ud800ice"}
    form = LoginForm(rf.post("/accounts/login/"), data=data)
    assert not form.is_valid()
    assert form.non_field_errors() == ["The username or password holds characters that are not text."]
