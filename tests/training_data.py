"""Feedback shaped like what the chat collects, in bulk, for the training tests and benchmarks."""

from __future__ import annotations

import random
import uuid

from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep
from training.ml.chat_corpus import QUESTIONS, TASKS, answer, worse_answer
from training.processor.options import split_of


def seed_rated_conversations(user, count: int, *, seed: int = 0, held_out: float | None = None) -> list[Conversation]:
    """``count`` conversations, each a question with a right numbered answer and a worse regeneration:
    a comparison prefers the right one, which is rated 5 (thumbs up, its steps ✓) and the worse one 1
    (thumbs down). ``held_out``: a run's ``test_fraction`` (split seed 0); the conversations' random
    ids are drawn again until the dataset's test split and its train split each get one at least (24
    ids all land in train one time in a thousand at 0.25, which once failed CI)."""
    rng = random.Random(seed)
    ids = [uuid.uuid4() for _ in range(count)]
    while held_out is not None and {split_of(i, seed=0, test_fraction=held_out) for i in ids} != {"train", "test"}:
        ids = [uuid.uuid4() for _ in range(count)]
    conversations = Conversation.objects.bulk_create(
        [Conversation(id=conversation_id, user=user, title=f"seeded {i}") for i, conversation_id in enumerate(ids)]
    )
    questions, answers = [], []
    for conversation in conversations:
        task, steps = rng.choice(TASKS)
        question = Message(conversation=conversation, role="user", content=rng.choice(QUESTIONS).format(task=task))
        questions.append(question)
        good = Message(conversation=conversation, role="assistant", parent=question, content=answer(rng, task, steps))
        bad = Message(
            conversation=conversation, role="assistant", parent=question, content=worse_answer(rng, task, steps)
        )
        answers.append((good, bad, steps))
    Message.objects.bulk_create(questions)
    Message.objects.bulk_create([m for good, bad, _ in answers for m in (good, bad)])
    step_rows = [
        MessageStep(message=good, index=i, content=f"{i + 1}. {text}")
        for good, _, steps in answers
        for i, text in enumerate(steps)
    ]
    MessageStep.objects.bulk_create(step_rows)
    Comparison.objects.bulk_create(
        [
            Comparison(
                user=user,
                prompt=question,
                chosen=good,
                rejected=bad,
                pair_key="-".join(sorted([str(good.id), str(bad.id)])),
            )
            for question, (good, bad, _) in zip(questions, answers, strict=True)
        ]
    )
    feedback = [Feedback(user=user, message=good, rating=5, thumbs="up") for good, _, _ in answers]
    feedback += [Feedback(user=user, message=bad, rating=1, thumbs="down") for _, bad, _ in answers]
    feedback += [Feedback(user=user, message=step.message, step=step, thumbs="up") for step in step_rows]
    Feedback.objects.bulk_create(feedback)
    return conversations
