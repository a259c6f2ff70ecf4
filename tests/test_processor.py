"""The feedback processor: datasets built from crafted conversations, the split, the snapshot."""

from __future__ import annotations

import gc
import itertools
import json
import random
import string
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from schwifty import IBAN
from schwifty import registry as iban_registry
from schwifty.exceptions import InvalidCountryCode

from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory, UserMessageFactory
from training.ml.config import TrainConfig
from training.models import DatasetSnapshot
from training.processor import DATASETS, ProcessorOptions, Scrubber, scrub, snapshot_build, split_of
from training.processor.scrub import IBAN_LENGTHS, iban_valid

ALL_TRAIN = ProcessorOptions(test_fraction=0.0)


# --- Helpers ---------------------------------------------------------------------------------------


def turn(conversation: Conversation, text: str) -> Message:
    return UserMessageFactory(conversation=conversation, content=text)


def reply(conversation: Conversation, prompt: Message, text: str, *, steps: list[str] | None = None, **kw: Any):
    answer = AssistantMessageFactory(conversation=conversation, parent=prompt, content=text, steps=0, **kw)
    for index, content in enumerate(steps or []):
        MessageStep.objects.create(message=answer, index=index, content=content)
    return answer


def rate(user, message: Message, *, thumbs: str | None = None, rating: int | None = None, step_index=None):
    step = None if step_index is None else MessageStep.objects.get(message=message, index=step_index)
    return Feedback.objects.create(user=user, message=message, step=step, thumbs=thumbs, rating=rating)


def compare(user, prompt: Message, chosen: Message, rejected: Message, *, tie: bool = False) -> Comparison:
    key = "-".join(sorted([str(chosen.id), str(rejected.id)]))
    return Comparison.objects.create(
        user=user, prompt=prompt, chosen=chosen, rejected=rejected, is_tie=tie, pair_key=key
    )


def read_rows(snapshot: DatasetSnapshot, dataset: str, split: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in ("train", "test") if split is None else (split,):
        path = Path(snapshot.path) / dataset / f"{name}.jsonl"
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return rows


def build(tmp_path: Path, options: ProcessorOptions = ALL_TRAIN, **kw: Any) -> DatasetSnapshot:
    return snapshot_build(options=options, root=tmp_path / "datasets", **kw)


def pairs(snapshot: DatasetSnapshot) -> set[tuple[str, str]]:
    return {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in read_rows(snapshot, "preference")}


def user(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# --- Preference pairs ------------------------------------------------------------------------------


def test_comparisons_become_preference_pairs(tmp_path, alice, conversation):
    prompt = turn(conversation, "How do I boil an egg?")
    good = reply(conversation, prompt, "Boil it for nine minutes.")
    bad = reply(conversation, prompt, "Fry it.")
    compare(alice, prompt, good, bad)

    rows = read_rows(build(tmp_path), "preference")

    assert rows == [
        {
            "prompt": [user("user", "How do I boil an egg?")],
            "chosen": [user("assistant", "Boil it for nine minutes.")],
            "rejected": [user("assistant", "Fry it.")],
        }
    ]


def test_a_correction_is_chosen_over_the_answer_and_makes_a_supervised_row(tmp_path, alice, bob, conversation):
    prompt = turn(conversation, "How do I boil an egg?")
    answer = reply(conversation, prompt, "Fry it.")
    failed = reply(conversation, prompt, "", status="failed")
    for who, message in ((alice, answer), (bob, answer), (alice, failed)):
        Feedback.objects.create(user=who, message=message, correction="Boil it for nine minutes.")

    snapshot = build(tmp_path)

    assert pairs(snapshot) == {("Boil it for nine minutes.", "Fry it.")}  # the same correction twice: once
    assert read_rows(snapshot, "supervised") == [
        {
            "prompt": [user("user", "How do I boil an egg?")],
            "completion": [user("assistant", "Boil it for nine minutes.")],
        }
    ]  # fmt: skip  (the failed answer's correction is the same row, written once)
    assert snapshot.stats["pairs_by_source"] == {
        "comparison": 0, "regeneration": 0, "cross_conversation": 0, "correction": 1
    }  # fmt: skip


def test_pairs_are_counted_by_source(tmp_path, alice, bob, conversation):
    prompt = turn(conversation, "How do I boil an egg?")
    good, bad, worse = (reply(conversation, prompt, t) for t in ("Boil it.", "Fry it.", "Bake it."))
    compare(alice, prompt, good, bad)
    rate(alice, bad, rating=4)
    rate(alice, worse, rating=1)
    other = ConversationFactory(user=bob)
    other_answer = reply(other, turn(other, "How do I boil an egg?"), "Poach it.")
    rate(bob, other_answer, rating=5)

    snapshot = build(tmp_path)

    sources = snapshot.stats["pairs_by_source"]
    assert sources["comparison"] == 1
    assert sources["regeneration"] == 1  # bad over worse, scored apart
    assert sources["cross_conversation"] >= 1
    assert sum(sources.values()) == snapshot.rows("preference", "train")


def test_tied_comparisons_are_dropped_and_counted(tmp_path, alice, conversation):
    prompt = turn(conversation, "Tea or coffee?")
    a, b = reply(conversation, prompt, "Tea."), reply(conversation, prompt, "Coffee.")
    compare(alice, prompt, a, b, tie=True)

    snapshot = build(tmp_path)

    assert read_rows(snapshot, "preference") == []
    assert snapshot.stats["ties_dropped"] == 1


def test_regenerated_answers_rated_differently_make_a_pair(tmp_path, alice, bob, conversation):
    prompt = turn(conversation, "Name a colour.")
    first = reply(conversation, prompt, "Blue.")
    second = reply(conversation, prompt, "Seven.")
    same = reply(conversation, prompt, "Red.")
    rate(alice, first, rating=5)
    rate(bob, first, thumbs="up")
    rate(alice, second, thumbs="down")
    rate(alice, same, rating=5)

    snapshot = build(tmp_path)

    assert pairs(snapshot) == {("Blue.", "Seven."), ("Red.", "Seven.")}


def test_same_question_in_two_conversations_makes_a_pair(tmp_path, alice, bob):
    one, two = ConversationFactory(user=alice), ConversationFactory(user=bob)
    good = reply(one, turn(one, "What is 2+2?"), "4.")
    bad = reply(two, turn(two, "What is 2+2?"), "5.")
    other = ConversationFactory(user=bob)
    reply(other, turn(other, "What is 3+3?"), "7.")  # another question: never paired with the above
    rate(alice, good, thumbs="up")
    rate(bob, bad, rating=1)
    rate(bob, Message.objects.get(content="7."), rating=5)

    assert pairs(build(tmp_path)) == {("4.", "5.")}


def test_same_prompt_needs_the_same_history_not_just_the_same_last_question(tmp_path, alice):
    one, two = ConversationFactory(user=alice), ConversationFactory(user=alice)
    reply(one, turn(one, "Hi"), "Hello!")
    good = reply(one, turn(one, "And then?"), "Then this.")
    bad = reply(two, turn(two, "And then?"), "Nothing.")
    rate(alice, good, rating=5)
    rate(alice, bad, rating=1)

    assert pairs(build(tmp_path)) == set()


def test_same_prompt_pairs_across_the_split_are_dropped(tmp_path, alice):
    options = ProcessorOptions(seed=3, test_fraction=0.5)
    by_side: dict[str, list[Conversation]] = {"train": [], "test": []}
    while not (by_side["train"] and by_side["test"]):
        conv = ConversationFactory(user=alice)
        by_side[split_of(conv.id, seed=3, test_fraction=0.5)].append(conv)
    train, test = by_side["train"][0], by_side["test"][0]
    rate(alice, reply(train, turn(train, "Same?"), "Yes."), rating=5)
    rate(alice, reply(test, turn(test, "Same?"), "No."), rating=1)

    snapshot = build(tmp_path, options)

    assert read_rows(snapshot, "preference") == []
    assert snapshot.stats["cross_split_pairs_dropped"] == 1


def test_conflicting_votes_are_settled_by_majority(tmp_path, alice, bob, operator, conversation):
    prompt = turn(conversation, "Pick one.")
    a, b = reply(conversation, prompt, "A."), reply(conversation, prompt, "B.")
    compare(alice, prompt, a, b)
    compare(bob, prompt, a, b)
    compare(operator, prompt, b, a)

    snapshot = build(tmp_path)

    assert pairs(snapshot) == {("A.", "B.")}
    assert snapshot.stats["conflicts_settled"] == 1
    assert snapshot.stats["conflicts_dropped"] == 0


def test_conflicting_votes_with_no_majority_drop_the_pair(tmp_path, alice, bob, conversation):
    prompt = turn(conversation, "Pick one.")
    a, b = reply(conversation, prompt, "A."), reply(conversation, prompt, "B.")
    compare(alice, prompt, a, b)  # one vote for A ...
    rate(bob, a, rating=1)  # ... and the scores give one vote for B
    rate(bob, b, rating=5)

    snapshot = build(tmp_path)

    assert pairs(snapshot) == set()
    assert snapshot.stats["conflicts_dropped"] == 1


def test_failed_and_streaming_answers_are_skipped(tmp_path, alice, conversation):
    prompt = turn(conversation, "Hello?")
    good = reply(conversation, prompt, "Hi there.")
    failed = reply(conversation, prompt, "Half an ans", status=Message.Status.FAILED)
    streaming = reply(conversation, prompt, "Stre", status=Message.Status.STREAMING)
    rate(alice, good, rating=5)
    rate(alice, failed, rating=1)
    rate(alice, streaming, rating=1)
    compare(alice, prompt, good, failed)

    snapshot = build(tmp_path)

    assert pairs(snapshot) == set()
    assert [r["completion"][0]["content"] for r in read_rows(snapshot, "unpaired")] == ["Hi there."]
    assert snapshot.stats["answers_unusable_with_feedback"] == 2
    assert snapshot.stats["comparisons_unusable"] == 1


# --- Unpaired labels -------------------------------------------------------------------------------


def labels_by_answer(snapshot: DatasetSnapshot) -> dict[str, bool]:
    return {r["completion"][0]["content"]: r["label"] for r in read_rows(snapshot, "unpaired")}


def test_unpaired_labels_follow_the_rating_thresholds_and_drop_neutral(tmp_path, alice, conversation):
    prompt = turn(conversation, "Rate me.")
    for rating in range(1, 6):
        rate(alice, reply(conversation, prompt, f"Rated {rating}."), rating=rating)
    rate(alice, reply(conversation, prompt, "Thumbs up."), thumbs="up")
    rate(alice, reply(conversation, prompt, "Thumbs down."), thumbs="down")

    snapshot = build(tmp_path)

    assert labels_by_answer(snapshot) == {
        "Rated 1.": False,
        "Rated 2.": False,
        "Rated 4.": True,
        "Rated 5.": True,
        "Thumbs up.": True,
        "Thumbs down.": False,
    }
    assert snapshot.stats["neutral_dropped"] == 1
    row = read_rows(snapshot, "unpaired")[0]
    assert set(row) == {"prompt", "completion", "label"}
    assert row["prompt"] == [user("user", "Rate me.")]


def test_unpaired_thresholds_come_from_the_options(tmp_path, alice, conversation):
    prompt = turn(conversation, "Rate me.")
    for rating in range(1, 6):
        rate(alice, reply(conversation, prompt, f"Rated {rating}."), rating=rating)
    options = ProcessorOptions.from_config(TrainConfig(test_fraction=0.01, good_rating=5, bad_rating=3))

    snapshot = build(tmp_path, ProcessorOptions(**{**options.as_dict(), "test_fraction": 0.0}))

    assert labels_by_answer(snapshot) == {"Rated 1.": False, "Rated 2.": False, "Rated 3.": False, "Rated 5.": True}
    assert snapshot.stats["neutral_dropped"] == 1
    assert snapshot.options["good_rating"] == 5


def test_a_rating_decides_over_disagreeing_thumbs(tmp_path, alice, conversation):
    prompt = turn(conversation, "Rate me.")
    rate(alice, reply(conversation, prompt, "Up but bad."), thumbs="up", rating=1)
    rate(alice, reply(conversation, prompt, "Down but good."), thumbs="down", rating=5)

    assert labels_by_answer(build(tmp_path)) == {"Up but bad.": False, "Down but good.": True}


def test_users_disagreeing_on_an_answer_give_the_majority_label_or_none(tmp_path, alice, bob, operator):
    conversation = ConversationFactory(user=alice)
    prompt = turn(conversation, "Rate me.")
    majority, split_vote = reply(conversation, prompt, "Mostly good."), reply(conversation, prompt, "Split.")
    for person, thumbs in ((alice, "up"), (bob, "up"), (operator, "down")):
        rate(person, majority, thumbs=thumbs)
    rate(alice, split_vote, thumbs="up")
    rate(bob, split_vote, thumbs="down")

    snapshot = build(tmp_path)

    assert labels_by_answer(snapshot) == {"Mostly good.": True}
    assert snapshot.stats["unpaired_conflicts_dropped"] == 1


# --- Steps -----------------------------------------------------------------------------------------


def test_step_labels_cover_the_labelled_prefix_of_steps(tmp_path, alice, conversation):
    prompt = turn(conversation, "How do I boil an egg?")
    steps = ["1. Boil water.", "2. Add the egg.", "3. Wait 9 minutes.", "4. Eat it."]
    full = reply(conversation, prompt, "\n".join(steps), steps=steps)
    rate(alice, full, thumbs="up", step_index=0)
    rate(alice, full, rating=1, step_index=1)
    rate(alice, full, rating=5, step_index=2)
    gap = reply(conversation, prompt, "Gap.\nGap 2.\nGap 3.", steps=["Gap.", "Gap 2.", "Gap 3."])
    rate(alice, gap, thumbs="up", step_index=0)
    rate(alice, gap, thumbs="down", step_index=2)
    late = reply(conversation, prompt, "Late.\nLate 2.", steps=["Late.", "Late 2."])
    rate(alice, late, thumbs="down", step_index=1)

    snapshot = build(tmp_path)

    assert read_rows(snapshot, "steps") == [
        {
            "prompt": [user("user", "How do I boil an egg?")],
            "completions": ["1. Boil water.", "2. Add the egg.", "3. Wait 9 minutes."],
            "labels": [True, False, True],
        },
        {"prompt": [user("user", "How do I boil an egg?")], "completions": ["Gap."], "labels": [True]},
    ]
    assert snapshot.stats["steps_truncated"] == 2
    assert read_rows(snapshot, "unpaired") == []  # step feedback is not message feedback


# --- Prompts ---------------------------------------------------------------------------------------


def test_prompts_hold_the_conversation_so_far_like_the_chat_does(tmp_path, alice, conversation):
    Message.objects.create(conversation=conversation, role=Message.Role.SYSTEM, content="Be brief.")
    first = turn(conversation, "Hi")
    reply(conversation, first, "Hello (old).")
    reply(conversation, first, "Hello!")  # the latest regeneration stands for the turn
    reply(conversation, first, "Broken", status=Message.Status.FAILED)
    second = turn(conversation, "What is an egg?")
    reply(conversation, second, "", status=Message.Status.FAILED)
    third = turn(conversation, "Never answered?")
    unrated = ConversationFactory(user=alice)
    turn(unrated, "Unrated question")

    prompts = [r["prompt"] for r in read_rows(build(tmp_path), "prompts")]

    system = user("system", "Be brief.")
    assert sorted(prompts, key=len) == sorted(
        [
            [system, user("user", "Hi")],
            [system, user("user", "Hi"), user("assistant", "Hello!"), user("user", "What is an egg?")],
            [
                system,
                user("user", "Hi"),
                user("assistant", "Hello!"),
                user("user", "What is an egg?"),
                user("user", third.content),
            ],
            [user("user", "Unrated question")],
        ],
        key=len,
    )


# --- Scrubbing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+egg@example.co.uk today", "Write to [EMAIL] today"),
        ("Call +44 20 7946 0958 or (555) 123-4567", "Call [PHONE] or [PHONE]"),
        ("Ring 555-123-4567 or 5551234567.", "Ring [PHONE] or [PHONE]."),
        ("My key is sk-proj-AbCdEf0123456789xyzXYZ", "My key is [SECRET]"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token [SECRET]"),
        ("AWS AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS [SECRET] / [SECRET]"),
        ("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "sha [SECRET]"),
        (
            "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n",
            "jwt [SECRET]",
        ),
    ],
)
def test_scrub_replaces_personal_data(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Cook it for 9 minutes at 180 degrees.",
        "1. Boil water.\n2. Add the egg.\n3. Wait 10-12 minutes.",
        "On 2024-01-15 we ate 10 20 30 40 eggs; pi is 3.14159; 1,000,000 or 100 000 000 people; $12.99.",
        "Version 1.2.3 from 192.168.1.10 in 2023.",
        "See https://example.com/docs/Page-Name-2023-edition/section-about-things for more.",
    ],
)
def test_scrub_keeps_ordinary_numbers_and_text(text):
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Payment cards: Luhn-valid numbers, unbroken or grouped by spaces or dashes (Visa, Mastercard, Amex).
        ("Pay with 4111 1111 1111 1111 please", "Pay with [CARD] please"),
        ("card 5555-5555-5555-4444.", "card [CARD]."),
        ("Amex 3782 822463 10005 or 4012888888881881", "Amex [CARD] or [CARD]"),
        ("Card 4111 1111 1111 1111 123 (the 123 is the CVV)", "Card [CARD] 123 (the 123 is the CVV)"),
        # IBANs: country code, check digits, BBAN; grouped or not, any case; the mod-97 check passes.
        ("IBAN DE89 3704 0044 0532 0130 00, thanks", "IBAN [IBAN], thanks"),
        ("Send it to GB82WEST12345698765432.", "Send it to [IBAN]."),
        ("mine is nl91abna0417164300 ok", "mine is [IBAN] ok"),
        ("BE68 5390 0754 7034 then", "[IBAN] then"),
        # Password phrases: the secret after the keyword goes, the keyword stays.
        ("my password is hunter2.", "my password is [SECRET]."),
        ("Password: 'correct horse battery'", "Password: [SECRET]"),
        ("login with user=bob pwd=s3cr3t&next=/", "login with user=bob pwd=[SECRET]"),
        ("The passphrase was: Tr0ub4dor&3!", "The passphrase was: [SECRET]!"),
        ("my passwd = sunshine", "my passwd = [SECRET]"),
    ],
)
def test_scrub_replaces_cards_ibans_and_passwords(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Order 1234 5678 9012 3456 ships today.",  # 16 digits in card shape, but the Luhn check fails
        "Tracking number 4111111111111112 is on its way.",  # one digit off a valid card
        "Wire to DE89 3704 0044 0532 0130 01 instead.",  # the IBAN's check digits do not match
        "GB82WEST12345698765431 is not an account.",
        "We sold 100 000 000 000 000 eggs.",  # thousands, not a card
        "A strong password is long and random. Password: required. The password was changed.",
        "Compass: north; the bypass is closed; passport number on page 2.",
    ],
)
def test_scrub_keeps_failed_checks_and_prose(text):
    assert scrub(text) == text


def _registry_ibans() -> dict[str, int]:
    """Every country code of the IBAN registry (ISO 13616) as schwifty ships it, with its IBAN's length;
    the aspirational ones (formats announced, not yet in the registry) left out."""
    lengths = {}
    for pair in itertools.product(string.ascii_uppercase, repeat=2):
        try:
            spec = iban_registry.get_iban_spec("".join(pair))
        except InvalidCountryCode:
            continue
        if not spec.aspirational:
            lengths[spec.country] = spec.iban_length
    return lengths


def test_iban_lengths_are_the_registry_s():
    assert _registry_ibans() == IBAN_LENGTHS


def test_scrub_replaces_an_iban_of_every_registry_country_and_keeps_it_with_a_wrong_check():
    rng = random.Random(7)
    for country in _registry_ibans():
        iban = IBAN.random(country_code=country, random=rng, use_registry=False)
        assert iban_valid(iban.compact), iban.compact
        assert iban_valid(iban.formatted), iban.formatted
        assert scrub(f"pay to {iban.formatted} today") == "pay to [IBAN] today", iban.formatted
        assert scrub(f"pay to {iban.compact.lower()}.") == "pay to [IBAN].", iban.compact
        wrong = f"{iban.compact[:2]}{(int(iban.compact[2:4]) + 1) % 100:02d}{iban.compact[4:]}"
        assert not iban_valid(wrong), wrong
        assert scrub(f"not {wrong} here") == f"not {wrong} here"


def test_scrub_counts_cards_ibans_and_passwords_by_kind():
    scrubber = Scrubber()
    scrubber("card 4111 1111 1111 1111, IBAN DE89370400440532013000, password: hunter2, order 1234 5678 9012 3456")
    assert scrubber.counts == {"card": 1, "iban": 1, "password": 1}


def test_personal_data_is_scrubbed_in_prompts_answers_and_steps(tmp_path, alice, conversation):
    prompt = turn(conversation, "I am bob@example.com, call me on +1 415 555 0100. Cook time for 3 eggs?")
    steps = ["1. Use key sk-live-0123456789abcdefABCDEF.", "2. Cook for 9 minutes."]
    answer = reply(conversation, prompt, "Mail eggs@farm.example about it.\n" + "\n".join(steps), steps=steps)
    rate(alice, answer, rating=5)
    rate(alice, answer, thumbs="up", step_index=0)
    rate(alice, answer, thumbs="up", step_index=1)

    snapshot = build(tmp_path)

    question = "I am [EMAIL], call me on [PHONE]. Cook time for 3 eggs?"
    assert read_rows(snapshot, "prompts") == [{"prompt": [user("user", question)]}]
    [unpaired] = read_rows(snapshot, "unpaired")
    assert unpaired["completion"][0]["content"].startswith("Mail [EMAIL] about it.\n1. Use key [SECRET].")
    assert read_rows(snapshot, "steps")[0]["completions"] == ["1. Use key [SECRET].", "2. Cook for 9 minutes."]
    assert snapshot.stats["scrubbed"] == {"email": 2, "phone": 1, "secret": 2}
    text = "".join(p.read_text() for p in Path(snapshot.path).rglob("*.jsonl"))
    assert "example.com" not in text
    assert "0123456789abcdef" not in text


# --- Duplicates and split --------------------------------------------------------------------------


def test_duplicate_rows_are_written_once(tmp_path, alice, bob):
    for person in (alice, bob):
        conv = ConversationFactory(user=person)
        rate(person, reply(conv, turn(conv, "How do I boil an egg?"), "Boil it."), rating=5)

    snapshot = build(tmp_path)

    assert read_rows(snapshot, "prompts") == [{"prompt": [user("user", "How do I boil an egg?")]}]
    assert len(read_rows(snapshot, "unpaired")) == 1
    assert snapshot.stats["duplicates_removed"] == {
        "preference": 0,
        "unpaired": 1,
        "steps": 0,
        "prompts": 1,
        "supervised": 0,
    }


def _many_conversations(user_obj, count: int) -> list[Conversation]:
    conversations = Conversation.objects.bulk_create([Conversation(user=user_obj) for _ in range(count)])
    Message.objects.bulk_create(
        [Message(conversation=c, role=Message.Role.USER, content=f"Question {i}") for i, c in enumerate(conversations)]
    )
    return conversations


def test_split_is_seeded_by_conversation_and_never_straddles(tmp_path, alice):
    conversations = _many_conversations(alice, 400)
    options = ProcessorOptions(seed=7, test_fraction=0.3)

    first = build(tmp_path / "a", options)
    again = build(tmp_path / "b", options)
    reseeded = build(tmp_path / "c", ProcessorOptions(seed=8, test_fraction=0.3))

    def sides(snapshot: DatasetSnapshot) -> dict[str, set[str]]:
        return {s: {r["prompt"][0]["content"] for r in read_rows(snapshot, "prompts", s)} for s in ("train", "test")}

    split = sides(first)
    assert split == sides(again)
    assert split != sides(reseeded)
    assert not split["train"] & split["test"]
    assert len(split["train"]) + len(split["test"]) == 400
    assert 80 <= len(split["test"]) <= 160
    expected_test = {
        f"Question {i}" for i, c in enumerate(conversations) if split_of(c.id, seed=7, test_fraction=0.3) == "test"
    }
    assert split["test"] == expected_test
    assert first.split == {"seed": 7, "test_fraction": 0.3, "unit": "conversation"}


# --- Files and the snapshot row --------------------------------------------------------------------


def _small_world(alice, bob) -> None:
    conv = ConversationFactory(user=alice)
    prompt = turn(conv, "How do I boil an egg?")
    steps = ["1. Boil water.", "2. Add the egg."]
    good = reply(conv, prompt, "\n".join(steps), steps=steps)
    bad = reply(conv, prompt, "Microwave it.")
    compare(alice, prompt, good, bad)
    rate(alice, good, rating=5)
    Feedback.objects.filter(pk=rate(bob, bad, thumbs="down").pk).update(correction="Boil it for nine minutes.")
    rate(alice, good, thumbs="up", step_index=0)
    rate(alice, good, thumbs="down", step_index=1)


def test_files_load_with_hugging_face_datasets(tmp_path, alice, bob):
    from datasets import load_dataset

    _small_world(alice, bob)
    snapshot = build(tmp_path)

    columns = {
        "preference": ["prompt", "chosen", "rejected"],
        "unpaired": ["prompt", "completion", "label"],
        "steps": ["prompt", "completions", "labels"],
        "prompts": ["prompt"],
        "supervised": ["prompt", "completion"],
    }
    for dataset in DATASETS:
        files = str(Path(snapshot.path) / dataset / "train.jsonl")
        loaded = load_dataset("json", data_files={"train": files}, cache_dir=str(tmp_path / "hf"))["train"]
        assert loaded.column_names == columns[dataset]
        assert len(loaded) == snapshot.rows(dataset, "train") > 0
        assert (Path(snapshot.path) / dataset / "test.jsonl").read_text() == ""
    assert load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf"))["train"][0]["prompt"] == [
        user("user", "How do I boil an egg?")
    ]


def test_snapshot_row_records_counts_split_source_and_stats(tmp_path, alice, bob):
    _small_world(alice, bob)
    feedback_ids = sorted(Feedback.objects.values_list("id", flat=True))
    comparison_id = Comparison.objects.get().id

    snapshot = build(tmp_path)

    folder = Path(snapshot.path)
    assert folder.parent == tmp_path / "datasets"
    assert folder.name.endswith(snapshot.content_hash[:12])
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [folder.name]  # no temp folder left
    assert snapshot.row_counts == {
        "preference": {"train": 2, "test": 0},
        "unpaired": {"train": 2, "test": 0},
        "steps": {"train": 1, "test": 0},
        "prompts": {"train": 1, "test": 0},
        "supervised": {"train": 1, "test": 0},
    }
    assert snapshot.source["feedback_ids"] == [feedback_ids[0], feedback_ids[-1]]
    assert snapshot.source["comparison_ids"] == [comparison_id, comparison_id]
    assert snapshot.source["feedback_rows"] == 4
    assert snapshot.source["comparison_rows"] == 1
    assert snapshot.source["messages"] == 3
    assert snapshot.options == {"seed": 0, "test_fraction": 0.0, "good_rating": 4, "bad_rating": 2, "chunk_size": 2000}
    assert snapshot.stats["conflicts_settled"] == 0
    assert snapshot.stats["pairs_by_source"] == {
        "comparison": 1, "regeneration": 0, "cross_conversation": 0, "correction": 1
    }  # fmt: skip
    assert snapshot.size_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert snapshot.build_seconds > 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["content_hash"] == snapshot.content_hash
    assert manifest["row_counts"] == snapshot.row_counts
    assert manifest["source"] == snapshot.source
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", *sorted(DATASETS)]


def test_content_hash_is_stable_until_the_data_changes(tmp_path, alice, bob):
    _small_world(alice, bob)

    first = build(tmp_path)
    second = build(tmp_path)
    Feedback.objects.filter(user=bob).update(thumbs="up")
    third = build(tmp_path)

    assert first.content_hash == second.content_hash
    assert first.path != second.path
    assert third.content_hash != first.content_hash


def test_an_empty_database_gives_empty_files(tmp_path, db):
    snapshot = build(tmp_path)

    assert all(snapshot.rows(d, s) == 0 for d in DATASETS for s in ("train", "test"))
    assert snapshot.source["feedback_ids"] is None
    assert (Path(snapshot.path) / "steps" / "test.jsonl").exists()


def test_progress_is_reported_every_chunk(tmp_path, alice):
    _many_conversations(alice, 25)
    seen: list[int] = []

    build(tmp_path, ProcessorOptions(test_fraction=0.0, chunk_size=10), progress=seen.append)

    assert seen == [10, 20, 25]  # one message per conversation


def test_an_exception_from_progress_aborts_and_leaves_nothing(tmp_path, alice):
    _many_conversations(alice, 25)

    class Cancelled(Exception):
        pass

    def cancel(rows: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        build(tmp_path, ProcessorOptions(chunk_size=10), progress=cancel)

    assert list((tmp_path / "datasets").iterdir()) == []
    assert not DatasetSnapshot.objects.exists()


def test_options_come_from_a_train_config():
    options = ProcessorOptions.from_config(TrainConfig(seed=5, test_fraction=0.2, good_rating=5, bad_rating=1))

    assert options == ProcessorOptions(seed=5, test_fraction=0.2, good_rating=5, bad_rating=1)
    with pytest.raises(ValueError, match="bad_rating < good_rating"):
        ProcessorOptions(good_rating=3, bad_rating=3)


# --- Memory ----------------------------------------------------------------------------------------


def _insert(model, columns: list[str], rows: list[tuple]) -> None:
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    marks = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def _seed_feedback(rows: int) -> None:
    """``rows`` feedback rows, fast (raw inserts): conversations of one question and two answers,
    each answer rated by four users."""
    raters = [UserFactory().id for _ in range(4)]
    uid = Message._meta.get_field("id")
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    conversations, messages, feedback = [], [], []
    for i in range(rows // 8):
        conv = uid.get_db_prep_value(uuid.uuid4(), connection)
        conversations.append((conv, raters[0], "", now))
        prompt = uid.get_db_prep_value(uuid.uuid4(), connection)
        messages.append((prompt, conv, "user", f"Question {i % 5000}?", None, "complete", "", now))
        for k in range(2):
            answer = uid.get_db_prep_value(uuid.uuid4(), connection)
            messages.append((answer, conv, "assistant", f"Answer {i}-{k}.", prompt, "complete", "", now))
            for j, rater in enumerate(raters):
                feedback.append((rater, answer, None, None, 1 + (i * 7 + j + k) % 5, "", "[]", now, now))
    _insert(Conversation, ["id", "user_id", "title", "created_at"], conversations)
    _insert(
        Message, ["id", "conversation_id", "role", "content", "parent_id", "status", "error", "created_at"], messages
    )
    _insert(
        Feedback,
        ["user_id", "message_id", "step_id", "thumbs", "rating", "comment", "tags", "created_at", "updated_at"],
        feedback,
    )


def _peak_bytes(tmp_path: Path) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        build(tmp_path, ProcessorOptions(chunk_size=1000))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.django_db
def test_memory_stays_flat_as_feedback_grows(tmp_path):
    _seed_feedback(20_000)
    small = _peak_bytes(tmp_path / "small")
    _seed_feedback(180_000)  # 200k in all
    large = _peak_bytes(tmp_path / "large")

    assert Feedback.objects.count() == 200_000
    assert large <= 1.5 * small, f"peak {large / 2**20:.1f} MiB at 200k rows vs {small / 2**20:.1f} MiB at 20k"
    # Speed is bench/dataset_build.py's to measure (README), not a timed assertion here.
