"""An operator in a real browser: the live version's page shows the positive-rate chart with its
deploy and canary markers, the canary panel and the monitor's decision; a screenshot is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from models_registry.services import canary_start, model_version_deploy, model_version_make_live
from tests.e2e.servers import platform_server
from tests.factories import ModelVersionFactory
from tests.monitoring_data import rate
from training.monitor.service import monitor_pass

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def dana(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    return get_user_model().objects.create_superuser(username="dana", password="correct horse battery staple")


def test_the_version_page_charts_the_positive_rate_with_markers(dana, tmp_path, browser, settings):
    settings.REGISTRY_FOUR_EYES = False
    previous = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    rate(previous, 200, 0.6)
    live = ModelVersionFactory(number=2, status="approved")
    model_version_deploy(version_id=live.pk, actor=dana, reason="better on the held-out prompts")
    rate(live, 200, 0.72)
    canary = canary_start(version_id=ModelVersionFactory(number=3, status="approved").pk, share=0.1, actor=dana)
    rate(canary.version, 60, 0.5)
    monitor_pass(act=False)

    with platform_server(tmp_path, "admin") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{server}/admin/login/?next=/admin/models_registry/modelversion/{live.pk}/change/")
        page.fill("#id_username", "dana")
        page.fill("#id_password", "correct horse battery staple")
        page.click("input[type=submit]")
        chart = page.wait_for_selector("svg.positive-rate-chart")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "version.png"), full_page=True)

        assert chart.is_visible()
        assert page.locator("svg.positive-rate-chart circle").count() >= 1
        assert page.locator("svg.positive-rate-chart g.marker-deployed").count() == 1
        assert page.get_by_text("Roll back to previous (policy:1)").is_visible()
        assert page.get_by_text("The canary policy:3 answers 10% of new conversations beside it.").is_visible()
        page.goto(f"{server}/admin/models_registry/modelversion/{canary.version_id}/change/")
        assert page.get_by_role("link", name="Promote to live…").is_visible()
        assert page.locator("table.monitor-decisions").get_by_text("Not enough data").is_visible()
        page.screenshot(path=str(SCREENSHOTS / "canary.png"), full_page=True)
