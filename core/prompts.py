"""The one rule for "the conversation so far": what the model is sent for a user turn (serving,
``feedback.chat.history_for``) and what it is trained on for that turn (the feedback processor) are
built here, so the two cannot drift apart. Django-free: callers pass message rows.

The rule:
- the conversation's first system message, if any, leads;
- then each user turn in order, and after it, before the next user turn, the answer that stands for
  it: the latest of its answers that did not fail and has text (a stopped answer stands; a
  regeneration replaces the earlier answers);
- the prompt for a user turn is everything up to and including that turn.

Answers are matched to their turn by ``parent_id``; an answer whose turn is unknown is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# (id, role, content, parent_id, status), in the conversation's order (created_at, id).
MessageRow = tuple[Any, str, str, Any, str]
ChatMessage = dict[str, str]

FAILED = "failed"


@dataclass(frozen=True)
class Turn:
    user: MessageRow
    answers: list[MessageRow]
    context: tuple[MessageRow, ...]  # the conversation so far, ending with ``user``


def standing_answer(answers: Sequence[MessageRow]) -> MessageRow | None:
    """The answer that stands for a turn in what follows it: the latest that did not fail and has text."""
    usable = [answer for answer in answers if answer[4] != FAILED and answer[2]]
    return usable[-1] if usable else None


def conversation_turns(messages: Iterable[MessageRow]) -> list[Turn]:
    """Each user turn of a conversation with its answers and the conversation so far."""
    system: MessageRow | None = None
    groups: dict[Any, tuple[MessageRow, list[MessageRow]]] = {}
    for message in messages:
        role = message[1]
        if role == "user":
            groups[message[0]] = (message, [])
        elif role == "assistant" and message[3] in groups:
            groups[message[3]][1].append(message)
        elif role == "system" and system is None:
            system = message
    context: list[MessageRow] = [system] if system is not None else []
    turns = []
    for user, answers in groups.values():
        context.append(user)
        turns.append(Turn(user=user, answers=answers, context=tuple(context)))
        standing = standing_answer(answers)
        if standing is not None:
            context.append(standing)
    return turns


def as_chat(context: Iterable[MessageRow], text: Callable[[MessageRow], str] | None = None) -> list[ChatMessage]:
    """The rows in chat format (OpenAI / TRL); ``text`` maps a row to what is shown of it (the
    processor's PII scrub), by default its content."""
    return [{"role": row[1], "content": text(row) if text else row[2]} for row in context]
