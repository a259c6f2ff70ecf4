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


def test_the_cycle_page_shows_its_timeline_and_gates_and_the_insights_page_its_charts(dana, tmp_path, browser):
    from datetime import timedelta

    from django.utils import timezone

    from feedback import services
    from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory
    from training.models import Cycle

    now = timezone.now()

    def stage(name: str, minutes: int, detail: str, status: str = "done") -> dict[str, object]:
        started = now - timedelta(minutes=minutes)
        finished = None if status == "running" else (started + timedelta(minutes=4)).isoformat()
        return {"name": name, "status": status, "started_at": started.isoformat(), "finished_at": finished,
                "detail": detail}  # fmt: skip

    cycle = Cycle.objects.create(
        policy_kind="dpo",
        status=Cycle.Status.AWAITING_APPROVAL,
        stage=Cycle.Stage.APPROVAL,
        new_ratings=412,
        stages=[
            stage("feedback", 30, "412 ratings since the previous cycle"),
            stage("reward", 26, "reward:2 trained; held-out accuracy 0.91 on 34 pairs"),
            stage("policy", 20, "policy:2 trained by DPO"),
            stage("gates", 12, "every gate passed"),
            stage("approval", 8, "", status="running"),
        ],
        gates=[
            {"name": "reward_accuracy", "passed": True, "figure": 0.91, "threshold": ">= 0.7", "detail": "34 pairs"},
            {"name": "policy_win_rate", "passed": True, "figure": 0.69, "threshold": ">= 0.55", "detail": "64 prompts"},
            {"name": "policy_kl", "passed": False, "figure": 24.1, "threshold": "<= 20", "detail": "nats per answer"},
        ],
    )
    # Insights: cooking answers liked, car answers disliked with a reason and a comment.
    rater, version = UserFactory(username="rater"), ModelVersionFactory(number=1)
    for day in range(6):
        for question, thumbs in (("How do I cook rice on the stove?", "up"), ("Why does my car engine stall?", "down")):
            for _ in range(3):
                message = AssistantMessageFactory(
                    conversation=ConversationFactory(user=rater), model_version=version, parent__content=question
                )
                extra = {"tags": ["inaccurate"], "comment": "Wrong about cars."} if thumbs == "down" else {}
                saved = services.feedback_upsert(user=rater, message_id=message.id, thumbs=thumbs, **extra).feedback
                type(saved).objects.filter(pk=saved.pk).update(created_at=now - timedelta(days=day))

    with platform_server(tmp_path, "admin") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{server}/admin/login/?next=/admin/training/cycle/{cycle.pk}/change/")
        page.fill("#id_username", "dana")
        page.fill("#id_password", "correct horse battery staple")
        page.click("input[type=submit]")
        timeline = page.wait_for_selector("table.cycle-timeline")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "cycle.png"), full_page=True)
        assert timeline.is_visible()
        assert page.locator("table.cycle-timeline tr.stage-row").count() == 6  # five so far and the canary to come
        assert page.locator("table.cycle-gates td.gate-fail").count() == 1
        assert page.get_by_text("reward:2 trained; held-out accuracy 0.91 on 34 pairs").is_visible()

        page.goto(f"{server}/admin/feedback/feedback/insights/")
        chart = page.wait_for_selector("svg.rate-lines-chart")
        page.screenshot(path=str(SCREENSHOTS / "insights.png"), full_page=True)
        assert chart.is_visible()
        assert page.locator("svg.bars-chart").first.is_visible()
        assert page.get_by_text("Wrong about cars.").first.is_visible()
