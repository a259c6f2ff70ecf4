"""The version page closes the loop for an operator: analytics with a chart of the positive rate per
day marked with deploys, canary and rollbacks; the canary panel and its actions; the monitor's
decisions; and "Roll back to previous" on the live version."""

from __future__ import annotations

import re

import pytest

from models_registry.models import Canary, ModelVersion
from models_registry.services import canary_start, model_version_deploy, model_version_make_live
from tests.factories import ModelVersionFactory
from tests.monitoring_data import rate
from training.monitor.service import monitor_pass

pytestmark = pytest.mark.django_db
ADMIN = "/admin/models_registry/modelversion/"


@pytest.fixture(autouse=True)
def _no_four_eyes(settings):
    settings.REGISTRY_FOUR_EYES = False


@pytest.fixture
def history():
    """policy:1 served and was rated, policy:2 was deployed over it, then policy:3 started as a canary."""
    v1 = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    rate(v1, 120, 0.6)
    v2 = ModelVersionFactory(number=2, status="approved")
    model_version_deploy(version_id=v2.id, actor=None, reason="better on the eval")
    rate(v2, 150, 0.7)
    v3 = ModelVersionFactory(number=3, status="approved")
    canary = canary_start(version_id=v3.id, share=0.1, actor=None, reason="try it")
    rate(v3, 120, 0.5)
    monitor_pass(act=False)
    return v1, ModelVersion.objects.get(pk=v2.pk), canary


def test_the_live_version_page_shows_analytics_a_chart_with_markers_and_roll_back(admin_client_, history):
    _, v2, _ = history

    html = admin_client_.get(f"{ADMIN}{v2.pk}/change/").content.decode()

    assert "How its answers were received" in html
    assert "150 answers served, 150 rated." in html
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in html
    assert 'class="marker marker-deployed"' in html
    assert re.search(r"<circle [^>]*><title>\d{4}-\d\d-\d\d: 70% positive of 150 ratings", html)
    assert f'href="{ADMIN}rollback/policy/"' in html
    assert "Roll back to previous (policy:1)" in html
    assert "The canary policy:3 answers 10% of new conversations beside it." in html
    assert "Monitor decisions" in html


def test_the_canary_page_shows_its_panel_actions_and_the_monitors_decision(admin_client_, history):
    _, _, canary = history

    html = admin_client_.get(f"{ADMIN}{canary.version_id}/change/").content.decode()

    assert "<strong>Canary</strong>: answers 10% of the new conversations" in html
    assert f'href="{ADMIN}canary/policy/promote/"' in html
    assert f'href="{ADMIN}canary/policy/stop/"' in html
    assert 'class="marker marker-canary"' in html
    assert "policy:3</td><td>policy:2" in html
    assert "<strong>Not enough data</strong>" in html  # the canary has 120 ratings, the live arm none since


def test_starting_a_canary_from_the_admin_asks_for_a_share_then_starts_it(admin_client_, operator):
    model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    candidate = ModelVersionFactory(number=2, status="approved")

    response = admin_client_.post(ADMIN, {"action": "start_canary", "_selected_action": [candidate.pk]})
    assert response["Location"] == f"{ADMIN}{candidate.pk}/canary/"
    page = admin_client_.get(response["Location"]).content.decode()
    assert "will answer the share of new conversations you" in page
    done = admin_client_.post(f"{ADMIN}{candidate.pk}/canary/", {"percent": "15", "reason": "new data"}, follow=True)

    assert "Started policy:2 as a canary at 15% of new conversations." in done.content.decode()
    canary = Canary.objects.get()
    assert (canary.version, canary.share, canary.started_by, canary.outcome) == (candidate, 0.15, operator, "running")
    candidate.refresh_from_db()
    assert candidate.status == "canary"


def test_stopping_a_canary_in_the_admin_needs_a_reason(admin_client_, history):
    _, _, canary = history
    refused = admin_client_.post(f"{ADMIN}canary/policy/stop/", {"reason": ""})
    assert refused.status_code == 200  # the form again, with its error
    canary.refresh_from_db()
    assert canary.outcome == "running"

    done = admin_client_.post(f"{ADMIN}canary/policy/stop/", {"reason": "users complain"}, follow=True)

    assert "Stopped the canary policy:3; it is approved again." in done.content.decode()
    canary.refresh_from_db()
    assert (canary.outcome, canary.version.status) == ("stopped", "approved")


def test_promoting_a_canary_in_the_admin_makes_it_live(admin_client_, history):
    _, v2, canary = history
    admin_client_.post(f"{ADMIN}canary/policy/promote/", {"reason": ""}, follow=True)
    canary.refresh_from_db()
    v2.refresh_from_db()
    assert (canary.outcome, canary.version.status, v2.status) == ("promoted", "live", "retired")


def test_monitor_decisions_are_listed_read_only(admin_client_, history):
    page = admin_client_.get("/admin/training/monitordecision/")
    assert page.status_code == 200
    assert "Not enough data" in page.content.decode()
    assert admin_client_.get("/admin/training/monitordecision/add/").status_code == 403
