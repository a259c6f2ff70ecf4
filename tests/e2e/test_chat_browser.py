"""A real browser (Debian's chromium, driven by Playwright) against the ASGI server as deployed,
serving the bootstrapped policy: log in, chat, rate a step and the answer, find both through the API.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from models_registry.artifacts import sha256_tree
from models_registry.services import model_version_make_live, model_version_register
from tests.e2e.servers import platform_server

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live_policy(bootstrapped):
    version = model_version_register(
        kind="policy", artifact_path=str(bootstrapped.policy_dir), checksums=sha256_tree(bootstrapped.policy_dir)
    )
    return model_version_make_live(version=version)


@pytest.fixture
def server(tmp_path, live_policy):
    with platform_server(tmp_path, "server", DEBUG="1", SERVING_MAX_NEW_TOKENS="120") as base:
        yield base, tmp_path / "server.log"


@pytest.fixture
def carol(settings):
    # The server process checks passwords with the default hashers, not the tests' fast one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    return get_user_model().objects.create_user(username="carol", password="correct horse battery staple")


def signed_in_chat(browser, base: str):
    """A page signed in as carol, on a new conversation whose socket is open; it counts the streamed
    token fragments (``window.tokenFrames``) from its first script on."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(
        """
        window.tokenFrames = 0; window.wsOpen = false;
        document.addEventListener('htmx:wsOpen', () => { window.wsOpen = true; });
        document.addEventListener('htmx:wsAfterMessage', (e) => {
          if (e.detail.message.includes('-live" hx-swap-oob="beforeend"')) window.tokenFrames += 1;
        });
        """
    )
    page.goto(f"{base}/")
    page.fill("#id_username", "carol")
    page.fill("#id_password", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/c/**")
    page.wait_for_function("window.wsOpen === true")
    return page


def test_a_user_chats_rates_a_step_and_the_answer_and_the_api_has_both(carol, server, browser):
    server, log = server
    key = Token.objects.create(user=carol).key
    page = signed_in_chat(browser, server)

    page.fill("#composer textarea", "How do I make tea?")
    page.press("#composer textarea", "Enter")
    # The tiny model may finish within a frame or two, so wait for the end, not for the streaming state.
    answer_box = page.wait_for_selector("article.assistant:not([data-status=streaming])", timeout=120_000)
    assert answer_box.get_attribute("data-status") == "complete", log.read_text()[-3000:]

    assert page.evaluate("window.tokenFrames") > 3, "the answer did not stream token by token"
    steps = page.locator("article.assistant .step")
    assert steps.count() >= 1
    first_step_text = steps.first.locator(".step-text").inner_text()

    steps.first.get_by_label("Bad step").click()
    page.wait_for_selector(".step-feedback .confirm")
    page.get_by_label("4 stars").click()
    page.wait_for_selector("text=Your satisfaction is now")
    page.locator(".answer-feedback summary", has_text="Comment").click()
    page.fill(".answer-feedback textarea[name=comment]", "Clear, but step one is wrong.")
    page.locator(".answer-feedback input[value=clear]").check()
    page.get_by_role("button", name="Save comment").click()
    page.wait_for_selector(".answer-feedback .confirm")
    page.locator(".answer-feedback summary", has_text="Correct it").click()
    page.fill(".answer-feedback textarea[name=correction]", "1. Do the right thing first.")
    page.get_by_role("button", name="Save correction").click()
    page.wait_for_function(
        "document.querySelector('.answer-feedback textarea[name=correction]')?.value === '1. Do the right thing first.'"
        " && document.querySelector('.answer-feedback .confirm') !== null"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat.png"), full_page=True)

    rows = httpx.get(f"{server}/api/assistant/feedback", headers={"Authorization": f"Token {key}"}).json()["results"]
    by_target = {row["step_index"]: row for row in rows}
    assert set(by_target) == {0, None}
    assert by_target[0]["thumbs"] == "down"
    assert (by_target[None]["rating"], by_target[None]["comment"], by_target[None]["tags"]) == (
        4,
        "Clear, but step one is wrong.",
        ["clear"],
    )
    assert by_target[None]["correction"] == "1. Do the right thing first."
    messages = httpx.get(
        f"{server}/api/assistant/conversations/{page.url.rstrip('/').rsplit('/', 1)[1]}/messages",
        headers={"Authorization": f"Token {key}"},
    ).json()["results"]
    answer = messages[-1]
    assert answer["model_version"] == "policy:1"
    assert answer["steps"][0]["content"] == first_step_text
    assert answer["token_count"] > 3
    assert answer["time_to_first_token_ms"] is not None


def test_a_refused_message_goes_back_into_the_composer(carol, live_policy, tmp_path, browser):
    """The page empties its composer as it sends; when the server refuses the message (here: sent
    while the first answer streams, or past the rate limit of one a minute), its text comes back into
    the composer, whole and focused, with the reason, and a later send empties the composer again."""
    settings = {"DEBUG": "1", "CHAT_RATE_PER_MINUTE": "1", "SERVING_MAX_NEW_TOKENS": "120"}
    with platform_server(tmp_path, "server", **settings) as base:
        page = signed_in_chat(browser, base)
        box = "#composer textarea"

        page.fill(box, "How do I make tea?")
        page.press(box, "Enter")
        page.wait_for_function(f"document.querySelector('{box}').value === ''")  # emptied as it was sent
        refused = "\nAnd coffee, with <milk> & sugar?"
        page.fill(box, refused)
        page.press(box, "Enter")  # at once: the answer streams, and the minute's one message is spent
        page.wait_for_selector("#chat-errors .error")
        reason = page.inner_text("#chat-errors")
        assert "Wait for the answer to finish" in reason or "You are sending messages too fast" in reason
        page.wait_for_function(f"document.querySelector('{box}').value !== ''")
        assert page.input_value(box) == refused
        assert page.evaluate(f"document.activeElement === document.querySelector('{box}')")
        assert page.locator(box).count() == 1

        # What the page does after a send that goes through: the composer is empty, not the restored text.
        page.evaluate("document.getElementById('composer').dispatchEvent(new CustomEvent('htmx:ws-after-send'))")
        assert page.input_value(box) == ""
        page.wait_for_selector("article.assistant:not([data-status=streaming])", timeout=120_000)
        assert page.locator("section.turn").count() == 1
