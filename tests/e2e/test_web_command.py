"""``bin/web``, the platform's web server as ``bin/run`` starts it (every end-to-end test's server is
started by it too): permessage-deflate on the chat's WebSockets is off unless ``WS_COMPRESSION`` turns
it on, a value it does not know stops it with a clear message, and each process warms up (the live
policy loaded) before it takes connections."""

from __future__ import annotations

import subprocess

import pytest
from websockets.sync.client import connect

from core.processes import ROOT
from tests.e2e.servers import platform_server, session_of
from tests.factories import ConversationFactory, UserFactory
from tests.test_serving import register_openai_live


def negotiated_extensions(base: str, session: str, conversation_id: object) -> str | None:
    """The chat socket's extensions, as the server answered a client that offers permessage-deflate
    (as browsers do)."""
    url = base.replace("http://", "ws://") + f"/ws/chat/{conversation_id}/"
    headers = {"Cookie": f"sessionid={session}"}
    with connect(url, origin=base, additional_headers=headers, compression="deflate", open_timeout=30) as ws:  # type: ignore[arg-type]
        assert ws.request is not None
        assert ws.response is not None
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]  # offered
        return ws.response.headers.get("Sec-WebSocket-Extensions")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("setting", "compressed"), [(None, False), ("0", False), ("on", True)])
def test_the_chat_socket_is_compressed_only_when_ws_compression_says_so(tmp_path, monkeypatch, setting, compressed):
    monkeypatch.delenv("WS_COMPRESSION", raising=False)  # the server's environment is this one's
    user = UserFactory()
    conversation = ConversationFactory(user=user)
    env = {} if setting is None else {"WS_COMPRESSION": setting}
    with platform_server(tmp_path, "web", **env) as base:
        answer = negotiated_extensions(base, session_of(user), conversation.id)
    assert (answer is not None and answer.startswith("permessage-deflate")) is compressed


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_server_loads_the_live_policy_before_it_takes_connections(tmp_path, settings):
    """uvicorn runs the lifespan (``rlhf_site.lifespan``): by the time the server answers, its
    process has loaded the live policy."""
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    register_openai_live("http://127.0.0.1:9")
    with platform_server(tmp_path, "web", SERVING_OPENAI_ALLOWED_HOSTS="127.0.0.1"):
        log = (tmp_path / "web.log").read_text()
    assert "serving policy:1 (openai backend)" in log
    assert "chat templates compiled, policy:1 loaded" in log
    assert log.index("policy:1 loaded") < log.index("Application startup complete")


def web(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [str(ROOT / "bin" / "web"), *args]
    return subprocess.run(command, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [(), ("--check",)])
def test_an_unknown_ws_compression_stops_the_server_with_a_clear_message(args):
    result = web(*args, WS_COMPRESSION="maybe", WEB_PYTHON="/bin/false")
    assert result.returncode == 2
    assert "WS_COMPRESSION=maybe is not one of" in result.stderr


@pytest.mark.parametrize("args", [(), ("--check",)])
def test_a_bad_web_workers_stops_the_server_with_a_clear_message(args):
    result = web(*args, WEB_WORKERS="two", WEB_PYTHON="/bin/false")
    assert result.returncode == 2
    assert "WEB_WORKERS=two is not a whole number" in result.stderr


def test_check_only_checks_good_settings():
    result = web("--check", WEB_WORKERS="2", WS_COMPRESSION="yes", WEB_PYTHON="/bin/false")  # never started
    assert (result.returncode, result.stderr) == (0, "")
