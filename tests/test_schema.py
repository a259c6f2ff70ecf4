from __future__ import annotations

from django.test import Client
from drf_spectacular.validation import validate_schema

from rlhf_site.urls import urlpatterns  # noqa: F401  (the schema covers these)


def test_the_openapi_schema_validates_and_covers_every_endpoint(db):
    response = Client().get("/api/schema/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    import yaml

    schema = yaml.safe_load(response.content)
    validate_schema(schema)
    paths = schema["paths"]
    assert set(paths) == {
        "/api/assistant/feedback",
        "/api/assistant/feedback/{feedback_id}",
        "/api/assistant/comparisons",
        "/api/assistant/conversations",
        "/api/assistant/conversations/{conversation_id}",
        "/api/assistant/conversations/{conversation_id}/messages",
        "/api/assistant/conversations/{conversation_id}/turns",
        "/api/assistant/satisfaction",
        "/api/assistant/insights",
        "/api/assistant/ws-ticket",
        "/api/training/runs",
        "/api/training/runs/{run_id}",
        "/api/training/runs/{run_id}/cancel",
        "/api/training/cycles",
        "/api/training/cycles/{cycle_id}",
        "/api/training/cycles/{cycle_id}/cancel",
        "/api/registry/versions",
        "/api/registry/versions/{version_id}",
        "/api/registry/versions/{version_id}/approve",
        "/api/registry/versions/{version_id}/reject",
        "/api/registry/versions/{version_id}/deploy",
        "/api/registry/versions/{version_id}/canary",
        "/api/registry/kinds/{kind}/rollback",
        "/api/registry/kinds/{kind}/canary/stop",
        "/api/registry/kinds/{kind}/canary/promote",
        "/api/registry/events",
        "/api/registry/canaries",
    }
    post = paths["/api/assistant/feedback"]["post"]
    assert set(post["responses"]) >= {"200", "201", "400", "401", "404", "413", "429"}
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("FeedbackInputRequest")
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    security = {name for entry in post["security"] for name in entry}
    assert {"tokenAuth", "cookieAuth"} <= security
    create = paths["/api/training/runs"]["post"]
    assert set(create["responses"]) >= {"201", "400", "401", "403"}
    assert "409" in paths["/api/training/runs/{run_id}/cancel"]["post"]["responses"]
    deploy = paths["/api/registry/versions/{version_id}/deploy"]["post"]
    assert set(deploy["responses"]) >= {"200", "400", "401", "403", "404", "409", "422"}
    assert any(p["name"] == "Idempotency-Key" for p in deploy["parameters"])


def test_swagger_ui_is_served(db):
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
