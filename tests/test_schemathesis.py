"""Schemathesis against the published schema (/api/schema/): every operation, with data that fits
the schema and data that does not, sent by an operator with an API token through the WSGI app.
No answer may be a 5xx; every answer must match the schema (status, content type, body); data the
schema forbids must be refused.

Schemathesis' pytest integration (``from_fixture``) does not work with the pytest this project pins,
so the operations are driven through its Python API, a bounded number of examples each (derandomized:
the same requests every run). README "Fuzzing" has the figures.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from rest_framework.throttling import UserRateThrottle
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 10  # per operation and mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def wsgi_app():
    """The site's WSGI app, kept inside the test's transaction as Django's test client keeps itself:
    a request must not close the connection that holds it."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.django_db
def test_the_api_answers_every_operation_without_a_5xx_and_as_its_schema_says(
    operator, live_models, monkeypatch, wsgi_app
):
    # Hundreds of requests from one user in seconds: the API's throttle would answer 429 (in the
    # schema, but then nothing else is exercised).
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": None})
    app = wsgi_app
    token = Token.objects.create(user=operator).key
    headers = {"Authorization": f"Token {token}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", app, headers=headers)
    statuses: Counter[int] = Counter()
    operations = 0
    unsatisfiable: list[str] = []
    failures: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: schemathesis.Case) -> None:
                response = case.call_and_validate(headers=headers, checks=CHECKS)
                statuses[response.status_code] += 1

            try:
                call()
            except Unsatisfiable:
                # Negative mode on an operation with nothing to get wrong (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, operation.label
                unsatisfiable.append(operation.label)
            except Exception as exc:  # every operation's failure in one report, not just the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")

    total = sum(statuses.values())
    print(f"\nschemathesis: {operations} operations, {total} requests, by status: {dict(sorted(statuses.items()))}")
    print(f"no negative cases for: {', '.join(unsatisfiable)}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
    assert not [code for code in statuses if code >= 500]
