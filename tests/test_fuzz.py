"""Property-based tests (Hypothesis): no JSON body, however odd, gets a 500 or an answer outside the
one error shape; the parser either returns a value every later layer can store and encode, or
refuses it with a 4xx. Bodies mix the endpoints' own field names with random keys and random JSON:
lone surrogates, NaN and Infinity, huge and tiny numbers, deep nesting.

Derandomized (the same examples on every run) so CI is reproducible; README "Fuzzing" has the figures.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework import exceptions
from rest_framework.test import APIClient

from core import jsonsafe
from rlhf_site.parsers import LimitedJSONParser

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any Unicode text, now and then with lone surrogates (category Cs): not always, or the parser would
# refuse nearly every body and nothing behind it would be exercised.
text = (
    st.text(max_size=20)
    | st.text(st.characters(exclude_categories=()), max_size=5)
    | st.sampled_from(["\ud800", "a\udfffb", "up", "down", "", " ", "clear", "0", "-1", "1e999"])
)
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, 5, 6, -1, 2**31, 0.5])
)
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def encode(value: Any) -> bytes:
    """JSON text as a client could send it: surrogates as \\u escapes, NaN and Infinity as tokens."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True).encode()


def parse(body: bytes) -> Any:
    request = type("Request", (), {"META": {"CONTENT_LENGTH": str(len(body))}})()
    context = {"request": request, "encoding": "utf-8"}
    return LimitedJSONParser().parse(io.BytesIO(body), "application/json", context)


bodies = (
    json_values.map(encode)
    | st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"1" + b"]" * n)
    | st.binary(max_size=200)
    | st.sampled_from([b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e999", b'"\\ud800"', b"[" * 40_000])
)


@FUZZ
@given(body=bodies)
def test_the_parser_returns_safe_json_or_a_4xx(body):
    try:
        value = parse(body)
    except exceptions.APIException as exc:
        refused: exceptions.APIException | None = exc
    else:
        refused = None
        jsonsafe.check(value)
        json.dumps(value, allow_nan=False).encode("utf-8")
    if refused is not None:
        assert 400 <= refused.status_code < 500
        str(refused.detail).encode("utf-8")  # the message can be sent back


# --- Through the API: the serializers, services and the error handler ---------------------------------

FIELDS = {
    "/api/assistant/feedback": ["message_id", "step_index", "thumbs", "rating", "comment", "tags"],
    "/api/assistant/comparisons": ["prompt_message_id", "chosen_message_id", "rejected_message_id", "is_tie"],
    "/api/training/runs": ["kind", "config"],
    "/api/training/cycles": ["policy", "config", "trigger"],
    "/api/registry/versions": ["kind", "base_url", "model_name", "metrics", "reason"],
}


NASTY = ["\ud800", "a\udfffb", {"\ud800": 1}, "nul\x00", {"a\x00": 1}]
NASTY += [float("nan"), float("inf"), -float("inf"), 1e308, 2**64, deep(50)]


def known_values(answer_id: str) -> st.SearchStrategy[Any]:
    plausible = [answer_id, "up", 3, "dpo", "reward", "ppo", ["clear"], {"epochs": 2}, {"reward": {"beta": 1}}]
    plausible += ["https://models.example.com/v1", {"accuracy": 0.9}]
    return st.sampled_from(NASTY) | st.sampled_from(plausible) | json_values


def valid_body(url: str, answer_id: str) -> dict[str, Any]:
    """A body the endpoint accepts (or refuses only for the state of the database)."""
    return {
        "/api/assistant/feedback": {"message_id": answer_id, "thumbs": "up", "tags": ["clear"]},
        "/api/assistant/comparisons": {
            "prompt_message_id": answer_id, "chosen_message_id": answer_id, "rejected_message_id": answer_id
        },
        "/api/training/runs": {"kind": "dpo", "config": {"epochs": 1}},
        "/api/training/cycles": {"policy": "dpo", "config": {"reward": {"epochs": 1}}},
        "/api/registry/versions": {
            "base_url": "https://models.example.com/v1", "model_name": "m", "metrics": {"accuracy": 0.9}
        },
    }[url]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn, answer_id: str) -> tuple[str, bytes]:
    """A valid body with a field or two (or a key inside a nested object) replaced by something
    odd; now and then fields drawn at random, or not an object of fields at all."""
    url = draw(st.sampled_from(sorted(FIELDS)))
    values = known_values(answer_id)
    shape = draw(st.integers(0, 9))
    if shape == 0:
        body: Any = draw(json_values | st.integers(1, 200).map(lambda n: {"config": deep(n, {"epochs": 1})}))
    elif shape == 1:
        names = draw(st.lists(st.sampled_from(FIELDS[url]) | text, max_size=5))
        body = {name: draw(values) for name in names}
    else:
        body = valid_body(url, answer_id)
        odd = st.sampled_from(NASTY) if draw(st.booleans()) else values  # half the time a known troublemaker
        name = draw(st.sampled_from(FIELDS[url])) if draw(st.integers(0, 4)) else draw(text)
        if isinstance(body.get(name), dict) and draw(st.booleans()):
            body[name] = {**body[name], draw(st.sampled_from(["note", "a\x00", "\ud800"]) | text): draw(odd)}
        else:
            body[name] = draw(odd)
    return url, encode(body)


ERROR_KEYS = {"status", "code", "message", "fields"}


@pytest.mark.django_db
def test_no_json_body_gets_a_500_or_another_error_shape(operator, answer, live_models, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["models.example.com"]  # so registrations can be stored
    answer.conversation.user = operator
    answer.conversation.save()
    client = APIClient()
    client.force_authenticate(operator)
    statuses: dict[int, int] = {}

    @FUZZ
    @given(request=requests(str(answer.id)))
    def check(request: tuple[str, bytes]) -> None:
        url, body = request
        response = client.generic("POST", url, body, content_type="application/json")
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (url, body, response.content)
        payload = json.loads(response.content.decode("utf-8"))
        if response.status_code >= 400:
            assert set(payload) == {"error"}
            assert set(payload["error"]) == ERROR_KEYS
            assert payload["error"]["status"] == response.status_code

    check()
    print(f"\nfuzzed API requests: {sum(statuses.values())}, by status: {dict(sorted(statuses.items()))}")
    assert not any(code >= 500 for code in statuses)
