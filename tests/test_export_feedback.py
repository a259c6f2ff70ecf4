"""``manage.py export_feedback``: one dataset of the processor as JSON Lines."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.factories import ConversationFactory
from tests.test_processor import compare, rate, reply, turn
from training.models import DatasetSnapshot
from training.processor import split_of


@pytest.fixture
def world(alice, bob):
    """A question with a good and a bad answer (compared and rated), and a second conversation."""
    conv = ConversationFactory(user=alice)
    prompt = turn(conv, "How do I boil an egg? Mail me at alice@example.com")
    good = reply(conv, prompt, "Boil it for 9 minutes.")
    bad = reply(conv, prompt, "Microwave it.")
    compare(alice, prompt, good, bad)
    rate(alice, good, rating=5)
    rate(alice, bad, thumbs="down")
    other = ConversationFactory(user=bob)
    rate(bob, reply(other, turn(other, "Hi"), "Hello!"), thumbs="up")
    return conv, other


def export(*args: str) -> str:
    out = StringIO()
    call_command("export_feedback", *args, stdout=out)
    return out.getvalue()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_it_exports_trl_preference_rows(tmp_path, world):
    path = tmp_path / "pref.jsonl"

    output = export("--format", "trl-preference", str(path), "--test-fraction", "0")

    assert lines(path) == [
        {
            "prompt": [{"role": "user", "content": "How do I boil an egg? Mail me at [EMAIL]"}],
            "chosen": [{"role": "assistant", "content": "Boil it for 9 minutes."}],
            "rejected": [{"role": "assistant", "content": "Microwave it."}],
        }
    ]
    assert f"Wrote 1 rows (trl-preference, split all) to {path}." in output
    assert not DatasetSnapshot.objects.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pref.jsonl"]  # no temp files left


def test_it_exports_trl_unpaired_rows(tmp_path, world):
    path = tmp_path / "unpaired.jsonl"

    export("--format", "trl-unpaired", str(path), "--test-fraction", "0")

    rows = lines(path)
    assert {(r["completion"][0]["content"], r["label"]) for r in rows} == {
        ("Boil it for 9 minutes.", True),
        ("Microwave it.", False),
        ("Hello!", True),
    }
    assert all(set(r) == {"prompt", "completion", "label"} for r in rows)


def test_it_exports_good_answers_in_openai_chat_format(tmp_path, world):
    path = tmp_path / "openai.jsonl"

    output = export("--format", "openai-jsonl", str(path), "--test-fraction", "0")

    assert sorted(lines(path), key=str) == sorted(
        [
            {
                "messages": [
                    {"role": "user", "content": "How do I boil an egg? Mail me at [EMAIL]"},
                    {"role": "assistant", "content": "Boil it for 9 minutes."},
                ]
            },
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        ],
        key=str,
    )
    assert "Wrote 2 rows" in output


def test_it_writes_only_the_chosen_split(tmp_path, world):
    conv, other = world
    seed = next(
        s for s in range(100) if {split_of(c.id, seed=s, test_fraction=0.5) for c in world} == {"train", "test"}
    )
    test_conv = conv if split_of(conv.id, seed=seed, test_fraction=0.5) == "test" else other
    expected = "Hi" if test_conv is other else "How do I boil an egg? Mail me at [EMAIL]"

    export("--format", "openai-jsonl", str(tmp_path / "t.jsonl"), "--split", "test", "--seed", str(seed),
           "--test-fraction", "0.5")  # fmt: skip

    assert [r["messages"][0]["content"] for r in lines(tmp_path / "t.jsonl")] == [expected]


def test_it_refuses_an_unknown_format(tmp_path, db):
    with pytest.raises(CommandError, match="invalid choice: 'csv'"):
        export("--format", "csv", str(tmp_path / "x.jsonl"))


def test_it_refuses_a_path_in_a_missing_folder(tmp_path, db):
    with pytest.raises(CommandError, match=r"folder .*/missing does not exist"):
        export("--format", "trl-unpaired", str(tmp_path / "missing" / "x.jsonl"))


def test_it_refuses_a_folder_as_path(tmp_path, db):
    with pytest.raises(CommandError, match="is a folder"):
        export("--format", "trl-unpaired", str(tmp_path))


def test_it_refuses_bad_thresholds(tmp_path, db):
    with pytest.raises(CommandError, match="bad_rating < good_rating"):
        export("--format", "trl-unpaired", str(tmp_path / "x.jsonl"), "--good-rating", "2")
