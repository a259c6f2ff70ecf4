"""Erasing a user (training.erasure): their rows go, the snapshots that hold them are invalidated and
their files removed, a record without personal data proves it, and no run trains on such a snapshot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.authtoken.models import Token

from core.models import IdempotencyRecord
from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep, UserSatisfaction
from models_registry.models import ModelVersion
from tests.factories import AssistantMessageFactory, ConversationFactory, ModelVersionFactory, UserFactory
from training import runner, services
from training.erasure import ErasureRefused, erasure_subject, user_forget
from training.exceptions import DatasetInvalidated, RunFailure
from training.ml.config import validate_config
from training.models import DatasetSnapshot, TrainingRun, UserErasure
from training.processor import ProcessorOptions, snapshot_build

pytestmark = pytest.mark.django_db
User = get_user_model()


def chat(user, text: str) -> Message:
    """A conversation of ``user``: a question, a rated three-step answer, a step rating, a regeneration
    and a comparison of the two answers."""
    conversation = ConversationFactory(user=user)
    answer = AssistantMessageFactory(conversation=conversation, parent__content=text)
    other = AssistantMessageFactory(conversation=conversation, parent=answer.parent, content="Fry it.")
    Feedback.objects.create(user=user, message=answer, rating=5)
    Feedback.objects.create(user=user, message=answer, step=answer.steps.first(), thumbs="up")
    Comparison.objects.create(
        user=user, prompt=answer.parent, chosen=answer, rejected=other, pair_key=f"{answer.pk}-{other.pk}"
    )
    UserSatisfaction.objects.update_or_create(user=user, defaults={"count": 1, "value_sum": 1.0})
    return answer


def build(tmp_path: Path) -> DatasetSnapshot:
    return snapshot_build(options=ProcessorOptions(test_fraction=0.0), root=tmp_path / "datasets")


def rows_of(user_id: int) -> dict[str, int]:
    return {
        "conversations": Conversation.objects.filter(user_id=user_id).count(),
        "messages": Message.objects.filter(conversation__user_id=user_id).count(),
        "steps": MessageStep.objects.filter(message__conversation__user_id=user_id).count(),
        "feedback": Feedback.objects.filter(user_id=user_id).count(),
        "comparisons": Comparison.objects.filter(user_id=user_id).count(),
        "satisfaction": UserSatisfaction.objects.filter(user_id=user_id).count(),
        "tokens": Token.objects.filter(user_id=user_id).count(),
        "idempotency": IdempotencyRecord.objects.filter(user_id=user_id).count(),
        "sessions": sum(s.get_decoded().get("_auth_user_id") == str(user_id) for s in Session.objects.all()),
        "users": User.objects.filter(pk=user_id).count(),
    }


@pytest.fixture
def world(alice, bob):
    """Alice and Bob, each with a chat, feedback, a token, a session; Alice an idempotency record."""
    for person in (alice, bob):
        chat(person, f"I am {person.username}, how do I boil an egg?")
        Token.objects.create(user=person)
        Client().force_login(person)
    IdempotencyRecord.objects.create(user=alice, key="k", scope="feedback", fingerprint="f", status_code=201, body={})
    return alice, bob


def test_forget_user_removes_the_users_rows_keeps_others_and_records_it(world):
    alice, bob = world
    alice_id = alice.pk
    before = rows_of(alice_id)
    assert before == {
        "conversations": 1, "messages": 3, "steps": 6, "feedback": 2, "comparisons": 1, "satisfaction": 1,
        "tokens": 1, "idempotency": 1, "sessions": 1, "users": 1,
    }  # fmt: skip
    bob_before = rows_of(bob.pk)
    out = io.StringIO()

    call_command("forget_user", "alice", "--yes", stdout=out)

    assert set(rows_of(alice_id).values()) == {0}
    assert rows_of(bob.pk) == bob_before
    erasure = UserErasure.objects.get()
    assert erasure.subject == erasure_subject(alice_id)
    assert erasure.source == "command"
    assert {k: erasure.counts[k] for k in ("conversations", "messages", "steps", "feedback", "comparisons")} == {
        "conversations": 1, "messages": 3, "steps": 6, "feedback": 2, "comparisons": 1,
    }  # fmt: skip
    assert (erasure.counts["tokens"], erasure.counts["sessions"], erasure.counts["idempotency_records"]) == (1, 1, 1)
    assert "alice" not in json.dumps(erasure.counts) + erasure.subject + str(erasure)
    text = out.getvalue()
    assert "Erasing alice" in text
    assert "conversations: 1" in text
    assert "messages: 3" in text
    assert f"Erased user id {alice_id} (erasure {erasure.pk})" in text


def test_the_command_asks_first_and_erases_nothing_unless_told_yes(world, monkeypatch):
    alice, _ = world
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(CommandError, match="Not erased"):
        call_command("forget_user", str(alice.pk), stdout=io.StringIO())
    assert rows_of(alice.pk)["conversations"] == 1
    assert not UserErasure.objects.exists()

    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    call_command("forget_user", str(alice.pk), stdout=io.StringIO())
    assert rows_of(alice.pk)["users"] == 0


def test_the_command_says_when_an_id_was_already_erased(world):
    alice, _ = world
    alice_id = alice.pk
    call_command("forget_user", "alice", "--yes", stdout=io.StringIO())
    erasure = UserErasure.objects.get()
    with pytest.raises(CommandError, match=rf"user id {alice_id} was erased on .* \(erasure {erasure.pk}\)"):
        call_command("forget_user", str(alice_id), "--yes")
    with pytest.raises(CommandError, match="No user with username or id 'nobody'"):
        call_command("forget_user", "nobody", "--yes")


def test_the_snapshots_holding_their_rows_are_invalidated_and_their_files_removed(
    tmp_path, alice, bob, django_capture_on_commit_callbacks
):
    chat(bob, "Only Bob here.")
    before_alice = build(tmp_path)  # read before Alice's first message: none of her rows
    chat(alice, "My question, from alice.")
    with_alice = build(tmp_path)
    assert "alice" in (Path(with_alice.path) / "prompts" / "train.jsonl").read_text()

    with django_capture_on_commit_callbacks(execute=True):
        erasure = user_forget(user=alice)

    with_alice.refresh_from_db()
    before_alice.refresh_from_db()
    assert with_alice.invalidated_at is not None
    assert with_alice.invalidated_reason.startswith(f"Erasure {erasure.pk} on ")
    assert "files were removed" in with_alice.invalidated_reason
    assert not Path(with_alice.path).exists()
    assert (before_alice.invalidated_at, before_alice.invalidated_reason) == (None, "")
    assert Path(before_alice.path, "manifest.json").is_file()
    assert list(erasure.snapshots.all()) == [with_alice]
    assert (erasure.counts["snapshots"], erasure.counts["snapshots_invalidated"]) == (1, 1)


def test_no_run_is_created_or_started_from_an_invalidated_snapshot(
    tmp_path, alice, live_models, django_capture_on_commit_callbacks
):
    chat(alice, "A question.")
    snapshot = build(tmp_path)
    with django_capture_on_commit_callbacks(execute=False):
        queued = services.training_run_create(kind="reward", dataset=snapshot)
    with django_capture_on_commit_callbacks(execute=True):
        user_forget(user=alice)

    with pytest.raises(DatasetInvalidated, match=f"Dataset snapshot {snapshot.pk} cannot be trained on: Erasure"):
        services.training_run_create(kind="reward", dataset=snapshot)
    assert list(TrainingRun.objects.all()) == [queued]

    assert runner.execute(queued.pk, worker="test:1") == "failed"
    queued.refresh_from_db()
    assert queued.status == "failed"
    assert queued.error_message.startswith(f"Dataset snapshot {snapshot.pk} cannot be trained on: Erasure")
    assert queued.error == "dataset_invalidated"
    assert queued.output_version is None


def test_a_run_whose_snapshot_is_invalidated_while_it_trains_registers_nothing(tmp_path, alice, live_models):
    chat(alice, "A question.")
    snapshot = build(tmp_path)
    run = TrainingRun.objects.create(kind="reward", status="running", dataset=snapshot, base_version=live_models[1])
    user_forget(user=alice)
    job = runner._Job.start(run.pk, "test:1")
    prepared = runner._Prepared(
        config=validate_config("reward", {}), snapshot=snapshot, base=tmp_path, reward=None, judge=None
    )

    with pytest.raises(RunFailure, match="invalidated while the run trained; nothing was registered"):
        runner._publish(job, prepared, result=None)  # type: ignore[arg-type]  # stops before reading it
    assert not ModelVersion.objects.filter(training_run=run).exists()


def test_deleting_a_user_in_the_admin_is_the_same_erasure(
    tmp_path, world, admin_client_, operator, django_capture_on_commit_callbacks
):
    alice, bob = world
    alice_id = alice.pk
    snapshot = build(tmp_path)
    LogEntry.objects.create(  # an earlier change of her account, which names her
        user=operator, content_type=ContentType.objects.get_for_model(User), object_id=str(alice_id),
        object_repr="alice", action_flag=2, change_message="Changed email.",
    )  # fmt: skip
    page = admin_client_.get(f"/admin/auth/user/{alice_id}/delete/")
    assert page.status_code == 200
    assert "alice: 1 conversations, 3 messages, 6 steps, 2 feedback, 1 comparisons" in page.content.decode()
    assert f"are invalidated and their files removed: {snapshot.pk}" in page.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(f"/admin/auth/user/{alice_id}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert set(rows_of(alice_id).values()) == {0}
    assert rows_of(bob.pk)["conversations"] == 1
    erasure = UserErasure.objects.get()
    assert (erasure.source, erasure.actor, erasure.subject) == ("admin", operator, erasure_subject(alice_id))
    snapshot.refresh_from_db()
    assert snapshot.invalidated_at is not None
    assert not Path(snapshot.path).exists()
    assert list(erasure.snapshots.all()) == [snapshot]
    deletion = LogEntry.objects.get(action_flag=3)
    assert (deletion.object_repr, deletion.object_id) == ("erased user", None)
    assert not LogEntry.objects.filter(object_repr__icontains="alice").exists()
    assert not LogEntry.objects.filter(object_id=str(alice_id), content_type__model="user").exists()


def test_the_admins_bulk_delete_erases_each_user(world, admin_client_):
    alice, bob = world
    ids = [alice.pk, bob.pk]
    response = admin_client_.post(
        "/admin/auth/user/", {"action": "delete_selected", "_selected_action": ids, "post": "yes"}
    )
    assert response.status_code == 302
    assert UserErasure.objects.filter(source="admin").count() == 2
    assert Conversation.objects.filter(user_id__in=ids).count() == 0


def test_a_delete_through_the_orm_is_an_erasure_too(tmp_path, world, django_capture_on_commit_callbacks):
    alice, _ = world
    alice_id = alice.pk
    snapshot = build(tmp_path)
    with django_capture_on_commit_callbacks(execute=True):
        User.objects.filter(pk=alice_id).delete()
    erasure = UserErasure.objects.get()
    assert (erasure.source, erasure.subject, erasure.counts["conversations"]) == (
        "delete",
        erasure_subject(alice_id),
        1,
    )
    assert rows_of(alice_id)["sessions"] == 0
    snapshot.refresh_from_db()
    assert snapshot.invalidated_at is not None
    assert not Path(snapshot.path).exists()


def test_erasing_a_user_the_audit_trail_names_is_refused_and_changes_nothing(tmp_path, alice):
    chat(alice, "A question.")
    snapshot = build(tmp_path)
    ModelVersionFactory(status="approved", approved_by=alice)

    with pytest.raises(
        ErasureRefused, match=r"alice cannot be erased: the audit trail names them \(1 model versions\)"
    ):
        user_forget(user=alice)

    assert rows_of(alice.pk)["conversations"] == 1
    assert not UserErasure.objects.exists()
    snapshot.refresh_from_db()
    assert snapshot.invalidated_at is None
    assert Path(snapshot.path).exists()
    with pytest.raises(CommandError, match="cannot be erased"):
        call_command("forget_user", "alice", "--yes", stdout=io.StringIO())
    assert User.objects.filter(pk=alice.pk).exists()


def test_the_admin_shows_an_audited_user_as_protected_and_keeps_them(alice, admin_client_):
    ModelVersionFactory(status="approved", approved_by=alice)
    page = admin_client_.get(f"/admin/auth/user/{alice.pk}/delete/")
    assert "would require deleting the following protected related objects" in page.content.decode()
    admin_client_.post(f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"})
    assert User.objects.filter(pk=alice.pk).exists()
    assert not UserErasure.objects.exists()


def test_a_user_with_no_conversations_is_erased_without_touching_snapshots(tmp_path, bob):
    chat(bob, "Bob's question.")
    snapshot = build(tmp_path)
    quiet = UserFactory(username="quiet")
    erasure = user_forget(user=quiet)
    assert erasure.counts["conversations"] == 0
    assert not erasure.snapshots.exists()
    snapshot.refresh_from_db()
    assert snapshot.invalidated_at is None
