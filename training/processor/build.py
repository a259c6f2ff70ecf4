"""The build: walk the conversations once, emit rows, then pair same-prompt answers across them.

Rows go to an ``emit(dataset, split, row)`` callback (the writers in ``export``). Anything that must
outlive one conversation lives in ``Scratch``, an SQLite file on disk (bounded page cache), so the
build's memory does not grow with the number of rows: the digests of the rows written (duplicate
removal) and the rated answers keyed by a hash of their conversation-so-far (rule c), which SQLite
sorts on disk for the second pass.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from core.prompts import as_chat, conversation_turns
from training.processor.options import ProcessorOptions, split_of
from training.processor.pairs import (
    SAME_PROMPT_CAP,
    RatedAnswer,
    feedback_label,
    feedback_value,
    majority,
    same_prompt_pairs,
    score_votes,
    settle_votes,
)
from training.processor.read import ConversationData, MessageRow, RawId
from training.processor.scrub import Scrubber

Row = dict[str, Any]
Emit = Callable[[str, str, Row], None]
Message = dict[str, str]

USABLE = ("complete", "stopped")
# Where a preference pair came from: a side-by-side vote, answers to the same turn scored apart (a
# regeneration), answers to the same conversation-so-far in different conversations, a correction.
PAIR_SOURCES = ("comparison", "regeneration", "cross_conversation", "correction")


class Scratch:
    """The build's on-disk working memory (one SQLite file, deleted with the build's temp folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-32000", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("CREATE TABLE answers (key BLOB, side TEXT, conversation TEXT, score REAL, content TEXT)")
        self.db.execute("CREATE TABLE prompts (key BLOB PRIMARY KEY, prompt TEXT) WITHOUT ROWID")
        self.db.execute("BEGIN")  # one transaction, never committed: the file is thrown away

    def new_digests(self, digests: list[bytes]) -> set[bytes]:
        """Record ``digests``; the ones not recorded before (one multi-row INSERT per 500)."""
        new: set[bytes] = set()
        for start in range(0, len(digests), 500):
            part = digests[start : start + 500]
            sql = "INSERT OR IGNORE INTO seen VALUES " + ",".join(["(?)"] * len(part)) + " RETURNING digest"
            new.update(row[0] for row in self.db.execute(sql, part))
        return new

    def add_rated(self, key: bytes, prompt: list[Message], side: str, answers: list[tuple[str, float, str]]) -> None:
        self.db.execute("INSERT OR IGNORE INTO prompts VALUES (?, ?)", (key, json.dumps(prompt, ensure_ascii=False)))
        self.db.executemany(
            "INSERT INTO answers VALUES (?, ?, ?, ?, ?)", [(key, side, c, score, text) for c, score, text in answers]
        )

    def rated(self) -> Iterator[tuple[bytes, str, str, float, str]]:
        yield from self.db.execute(
            "SELECT key, side, conversation, score, content FROM answers ORDER BY key, conversation, rowid"
        )

    def prompt(self, key: bytes) -> list[Message]:
        row = self.db.execute("SELECT prompt FROM prompts WHERE key = ?", (key,)).fetchone()
        prompt: list[Message] = json.loads(row[0])
        return prompt

    def close(self) -> None:
        self.db.close()


def _assistant(content: str) -> list[Message]:
    return [{"role": "assistant", "content": content}]


def _prefix_key(context: tuple[MessageRow, ...]) -> bytes:
    """sha256 of the raw conversation-so-far: the key of rule (c)."""
    digest = hashlib.sha256()
    for _, role, content, _, _ in context:
        digest.update(role.encode() + b"\0" + content.encode() + b"\x1e")
    return digest.digest()


class Builder:
    """Turns conversations into dataset rows (see the package docstring for the rules)."""

    def __init__(self, *, options: ProcessorOptions, scratch: Scratch, emit: Emit, wanted: frozenset[str]) -> None:
        self.options = options
        self.scratch = scratch
        self.emit = emit
        self.wanted = wanted
        self.stats: Counter[str] = Counter()
        self.pair_sources: Counter[str] = Counter({source: 0 for source in PAIR_SOURCES})
        self.scrubber = Scrubber()

    def stats_dict(self) -> dict[str, Any]:
        return {
            **dict(sorted(self.stats.items())),
            "pairs_by_source": dict(self.pair_sources),
            "scrubbed": dict(sorted(self.scrubber.counts.items())),
        }

    # --- Pass 1: one conversation at a time --------------------------------------------------------

    def conversation(self, conv: ConversationData) -> None:
        side = split_of(conv.id, seed=self.options.seed, test_fraction=self.options.test_fraction)
        clean_cache: dict[RawId, str] = {}

        def clean(message: MessageRow) -> str:
            text = clean_cache.get(message[0])
            if text is None:
                text = clean_cache[message[0]] = self.scrubber(message[2])
            return text

        message_feedback: dict[RawId, list[tuple[str | None, int | None]]] = {}
        step_feedback: dict[int, list[tuple[str | None, int | None]]] = {}
        corrections: dict[RawId, list[str]] = {}
        for message_id, step_id, thumbs, rating, correction in conv.feedback:
            if step_id is None:
                message_feedback.setdefault(message_id, []).append((thumbs, rating))
                if correction:
                    corrections.setdefault(message_id, []).append(correction)
            else:
                step_feedback.setdefault(step_id, []).append((thumbs, rating))
        comparisons: dict[RawId, list[tuple[RawId, RawId, bool]]] = {}
        for prompt_id, chosen_id, rejected_id, is_tie in conv.comparisons:
            comparisons.setdefault(prompt_id, []).append((chosen_id, rejected_id, is_tie))

        for turn in conversation_turns(conv.messages):
            user_turn, answers = turn.user, turn.answers
            prompt = as_chat(turn.context, clean)
            if "prompts" in self.wanted:
                self.emit("prompts", side, {"prompt": prompt})
            usable = {a[0]: a for a in answers if a[4] in USABLE and a[2]}
            self.stats["answers_unusable_with_feedback"] += sum(
                1 for a in answers if a[0] not in usable and a[0] in message_feedback
            )
            scores: dict[RawId, float] = {}
            for answer_id, answer in usable.items():
                given = message_feedback.get(answer_id, [])
                values = [v for v in (feedback_value(t, r) for t, r in given) if v is not None]
                if values:
                    scores[answer_id] = sum(values) / len(values)
                if given and "unpaired" in self.wanted:
                    self._unpaired(side, prompt, clean(answer), given)
                if "steps" in self.wanted and answer_id in conv.steps:
                    self._steps(side, prompt, conv.steps[answer_id], step_feedback)
            for answer in answers:
                for correction in dict.fromkeys(corrections.get(answer[0], [])):  # each distinct one once
                    self._correction(side, prompt, usable.get(answer[0]), correction, clean)
            if "preference" in self.wanted:
                self._siblings(side, prompt, usable, scores, comparisons.get(user_turn[0], []), clean)
                if scores:
                    rated = [(str(conv.id), scores[a], clean(usable[a])) for a in scores]
                    self.scratch.add_rated(_prefix_key(turn.context), prompt, side, rated)

    def _unpaired(
        self, side: str, prompt: list[Message], answer: str, given: list[tuple[str | None, int | None]]
    ) -> None:
        labels: list[bool] = []
        for thumbs, rating in given:
            label = feedback_label(thumbs, rating, good=self.options.good_rating, bad=self.options.bad_rating)
            if label == "neutral":
                self.stats["neutral_dropped"] += 1
            elif isinstance(label, bool):
                labels.append(label)
        if not labels:
            return
        decided = majority(labels)
        if decided is None:
            self.stats["unpaired_conflicts_dropped"] += 1
            return
        self.emit("unpaired", side, {"prompt": prompt, "completion": _assistant(answer), "label": decided})

    def _steps(
        self,
        side: str,
        prompt: list[Message],
        steps: list[tuple[int, int, str]],
        step_feedback: dict[int, list[tuple[str | None, int | None]]],
    ) -> None:
        completions: list[str] = []
        labels: list[bool] = []
        for position, (step_id, _, content) in enumerate(steps):
            votes = []
            for thumbs, rating in step_feedback.get(step_id, []):
                label = feedback_label(thumbs, rating, good=self.options.good_rating, bad=self.options.bad_rating)
                if isinstance(label, bool):
                    votes.append(label)
            decided = majority(votes)
            if decided is None:
                if any(s[0] in step_feedback for s in steps[position + 1 :]):
                    self.stats["steps_truncated"] += 1
                break
            completions.append(self.scrubber(content))
            labels.append(decided)
        if completions:
            self.emit("steps", side, {"prompt": prompt, "completions": completions, "labels": labels})

    def _siblings(
        self,
        side: str,
        prompt: list[Message],
        usable: dict[RawId, MessageRow],
        scores: dict[RawId, float],
        comparisons: list[tuple[RawId, RawId, bool]],
        clean: Callable[[MessageRow], str],
    ) -> None:
        votes: dict[tuple[RawId, RawId], int] = {}
        compared: set[frozenset[RawId]] = set()
        for chosen, rejected, is_tie in comparisons:
            if is_tie:
                self.stats["ties_dropped"] += 1
            elif chosen in usable and rejected in usable:
                votes[(chosen, rejected)] = votes.get((chosen, rejected), 0) + 1
                compared.add(frozenset((chosen, rejected)))
            else:
                self.stats["comparisons_unusable"] += 1
        score_votes(scores, votes)
        result = settle_votes(votes)
        self.stats["conflicts_settled"] += result.settled
        self.stats["conflicts_dropped"] += result.dropped
        for chosen, rejected in result.pairs:
            source = "comparison" if frozenset((chosen, rejected)) in compared else "regeneration"
            self._pair(side, prompt, clean(usable[chosen]), clean(usable[rejected]), source=source)

    def _correction(
        self,
        side: str,
        prompt: list[Message],
        answer: MessageRow | None,
        correction: str,
        clean: Callable[[MessageRow], str],
    ) -> None:
        """A corrected answer: a supervised row (the prompt and the correction), and a preference
        pair (the correction chosen over the answer) when the answer is usable."""
        text = self.scrubber(correction)
        if "supervised" in self.wanted:
            self.emit("supervised", side, {"prompt": prompt, "completion": _assistant(text)})
        if "preference" in self.wanted and answer is not None:
            self._pair(side, prompt, text, clean(answer), source="correction")

    def _pair(self, side: str, prompt: list[Message], chosen: str, rejected: str, *, source: str) -> None:
        if chosen == rejected:
            self.stats["identical_pairs_dropped"] += 1
            return
        self.pair_sources[source] += 1
        self.emit(
            "preference", side, {"prompt": prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
        )

    # --- Pass 2: answers to the same conversation-so-far in different conversations -----------------

    def same_prompt(self) -> None:
        if "preference" not in self.wanted:
            return
        for key, rows in groupby(self.scratch.rated(), key=lambda r: r[0]):
            answers: list[RatedAnswer] = []
            for _, side, conversation, score, content in rows:
                if len(answers) < SAME_PROMPT_CAP:
                    answers.append(RatedAnswer(conversation, side, score, content))
                else:
                    self.stats["same_prompt_capped"] += 1
            if len({a.conversation for a in answers}) < 2:
                continue
            prompt: list[Message] | None = None
            for chosen, rejected in same_prompt_pairs(answers):
                if chosen.side != rejected.side:
                    self.stats["cross_split_pairs_dropped"] += 1
                    continue
                prompt = prompt or self.scratch.prompt(key)
                self._pair(chosen.side, prompt, chosen.content, rejected.content, source="cross_conversation")
