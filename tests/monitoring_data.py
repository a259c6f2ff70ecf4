"""Rated answers in bulk for the monitor's tests: ``rate(version, n, positive)``."""

from __future__ import annotations

import itertools

from django.contrib.auth import get_user_model

from feedback.models import Comparison, Conversation, Feedback, Message

_raters = itertools.count()


def raters(count: int) -> list:
    user_model = get_user_model()
    return user_model.objects.bulk_create(
        [user_model(username=f"rater-{next(_raters)}", password="!") for _ in range(count)]
    )


def rate(version, n: int, positive: float, *, per_user: int = 10, stars: bool = False) -> list[Message]:
    """``n`` answers of ``version``, each rated once (thumbs, or stars 5/2) by users who rate
    ``per_user`` answers each; the first ``round(n * positive)`` are positive."""
    users = raters(-(-n // per_user))
    conversations = Conversation.objects.bulk_create([Conversation(user=u, title="monitor") for u in users])
    turns = Message.objects.bulk_create(
        [Message(conversation=conversations[i // per_user], role="user", content=f"q{i}") for i in range(n)]
    )
    answers = Message.objects.bulk_create(
        [
            Message(
                conversation=turn.conversation,
                role="assistant",
                parent=turn,
                content="1. An answer.",
                model_version=version,
                token_count=5,
            )
            for turn in turns
        ]
    )
    good = round(n * positive)
    Feedback.objects.bulk_create(
        [
            Feedback(
                user=answer.conversation.user,
                message=answer,
                model_version=version,
                **({"rating": 5 if i < good else 2} if stars else {"thumbs": "up" if i < good else "down"}),
            )
            for i, answer in enumerate(answers)
        ]
    )
    return answers


def vote(new, baseline, *, won: int, lost: int, tied: int = 0) -> None:
    """Side-by-side votes between an answer of ``new`` and one of ``baseline`` to the same turn."""
    users = raters(won + lost + tied)
    for i, user in enumerate(users):
        conversation = Conversation.objects.create(user=user)
        turn = Message.objects.create(conversation=conversation, role="user", content="q")
        a = Message.objects.create(conversation=conversation, role="assistant", parent=turn, model_version=new)
        b = Message.objects.create(conversation=conversation, role="assistant", parent=turn, model_version=baseline)
        chosen, rejected = (a, b) if i < won else (b, a)
        Comparison.objects.create(
            user=user, prompt=turn, chosen=chosen, rejected=rejected, is_tie=i >= won + lost,
            pair_key="-".join(sorted([str(a.id), str(b.id)])),
            chosen_version=chosen.model_version, rejected_version=rejected.model_version,
        )  # fmt: skip
