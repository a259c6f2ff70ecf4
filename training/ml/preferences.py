"""Hidden preferences over the form of an answer, for simulated users and the benchmarks. No Django.

Each is something the bootstrapped policy does some of the time (measured on its own sampled answers:
about 15-20%), so that a model can learn it from feedback:

- ``closing_offer``: the answer ends with the offer "Let me know if you have questions." (once: an
  answer that repeats it is not liked);
- ``sure_opener``: the answer opens with "Sure!";
- ``short_intro``: the answer opens with the short "To <task>:" line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

OFFER = "Let me know if you have questions."
PREFERENCES: dict[str, Callable[[str], bool]] = {
    "closing_offer": lambda text: text.rstrip().endswith(OFFER) and text.count(OFFER) == 1,
    "sure_opener": lambda text: text.lstrip().startswith("Sure!"),
    "short_intro": lambda text: re.match(r"To [^\n]+:\n", text.lstrip()) is not None,
}


def questions(count: int, rng: random.Random) -> list[str]:
    """``count`` questions of the bootstrapped corpus's kind."""
    from training.ml.chat_corpus import QUESTIONS, TASKS

    return [rng.choice(QUESTIONS).format(task=rng.choice(TASKS)[0]) for _ in range(count)]


def sampled_pairs(
    policy_dir: Path, preference: str, *, count: int, seed: int, per_question: int = 6
) -> list[dict[str, Any]]:
    """Up to ``count`` preference pairs (TRL's conversational rows): for fresh questions, answers the
    policy samples (as the chat samples them), one the preference likes against one it does not."""
    from training.ml.evaluation import sample_answers

    rng = random.Random(seed)
    likes = PREFERENCES[preference]
    pairs: list[dict[str, Any]] = []
    for _ in range(30):
        if len(pairs) >= count:
            break
        prompts = [[{"role": "user", "content": q}] for q in questions(64, rng)] * per_question
        answers = sample_answers(policy_dir, prompts, seed=rng.randrange(2**31))
        split: dict[str, tuple[list[str], list[str]]] = {}
        for prompt, answer in zip(prompts, answers, strict=True):
            good, bad = split.setdefault(prompt[0]["content"], ([], []))
            (good if likes(answer) else bad).append(answer)
        for question, (good, bad) in split.items():
            if good and bad and len(pairs) < count:
                pairs.append(
                    {
                        "prompt": [{"role": "user", "content": question}],
                        "chosen": [{"role": "assistant", "content": good[0]}],
                        "rejected": [{"role": "assistant", "content": bad[0]}],
                    }
                )
    return pairs
