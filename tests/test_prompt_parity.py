"""Train/serve parity: for every user turn, the prompt the feedback processor trains on is exactly
what serving sends the model (both built by ``core.prompts``), the PII scrub aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.prompts import as_chat, conversation_turns
from feedback.chat import history_for
from feedback.models import Conversation, Message
from training.processor import ProcessorOptions, snapshot_build
from training.processor.scrub import Scrubber

pytestmark = pytest.mark.django_db


def say(
    conversation: Conversation, role: str, content: str, *, parent: Message | None = None, status: str = "complete"
):
    return Message.objects.create(conversation=conversation, role=role, content=content, parent=parent, status=status)


@pytest.fixture
def conversation(alice) -> tuple[Conversation, list[Message]]:
    """A system message, regenerations (one failed, one stopped), a failed empty answer and a last
    user turn not answered yet."""
    chat = Conversation.objects.create(user=alice, title="eggs")
    say(chat, "system", "You answer in numbered steps. Reply to alice@example.com if unsure.")
    first = say(chat, "user", "How do I boil an egg? Call me on +44 20 7946 0958.")
    say(chat, "assistant", "1. Boil water.\n2. Add the egg.", parent=first)
    say(chat, "assistant", "", parent=first, status="failed")
    say(chat, "assistant", "1. Boil water.\n2. Wait", parent=first, status="stopped")  # stands for the turn
    second = say(chat, "user", "And a duck egg?")
    say(chat, "assistant", "1. Boil longer.", parent=second)
    say(chat, "assistant", "1. Partial", parent=second, status="failed")  # failed: never stands
    third = say(chat, "user", "Thanks! Anything else?")
    return chat, [first, second, third]


def processor_prompts(tmp_path: Path) -> list[list[dict[str, str]]]:
    snapshot = snapshot_build(options=ProcessorOptions(test_fraction=0.0), root=tmp_path)
    rows = (Path(snapshot.path) / "prompts" / "train.jsonl").read_text().splitlines()
    return [json.loads(row)["prompt"] for row in rows]


def test_the_processor_trains_on_exactly_what_serving_sends(conversation, tmp_path):
    _, user_turns = conversation
    scrub = Scrubber()
    served = [[{**m, "content": scrub(m["content"])} for m in history_for(prompt=turn)] for turn in user_turns]

    trained = processor_prompts(tmp_path)

    assert trained == served
    # And what that is: the system message first, each turn's standing answer (the stopped
    # regeneration, not the failed one), personal data scrubbed.
    assert [m["role"] for m in served[2]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert served[2][2]["content"] == "1. Boil water.\n2. Wait"
    assert served[2][4]["content"] == "1. Boil longer."
    assert "[EMAIL]" in served[0][0]["content"]
    assert "[PHONE]" in served[0][1]["content"]


def test_serving_sends_the_system_message_first():
    rows = [
        (1, "user", "hi", None, "complete"),
        (2, "system", "Be brief.", None, "complete"),
        (3, "assistant", "hello", 1, "complete"),
        (4, "user", "bye", None, "complete"),
    ]
    turns = conversation_turns(rows)
    assert [as_chat(t.context) for t in turns] == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ],
    ]
