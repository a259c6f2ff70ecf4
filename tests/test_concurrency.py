"""Real concurrent writers on PostgreSQL: the user's satisfaction row lock serialises them, and an
idempotency record's unique key serialises retries."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.db.models import Count

from core.idempotency import idempotent
from core.models import IdempotencyRecord
from feedback import services
from feedback.exceptions import NotFound
from feedback.models import Feedback, MessageStep, UserSatisfaction
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory
from training.erasure import user_forget

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def worker(i: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = call()
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    close_old_connections()
    return results


def test_two_concurrent_upserts_leave_one_row_and_a_consistent_score():
    user = UserFactory(username="racer")
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))

    results = run_together(
        lambda: services.feedback_upsert(user=user, message_id=answer.id, thumbs="up"),
        lambda: services.feedback_upsert(user=user, message_id=answer.id, rating=1),
    )

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r.created for r in results) == [False, True]
    feedback = Feedback.objects.get(user=user, message=answer)
    assert (feedback.thumbs, feedback.rating) == ("up", 1)
    satisfaction = UserSatisfaction.objects.get(user=user)
    assert (satisfaction.count, satisfaction.thumbs_up, satisfaction.ratings) == (1, 1, 1)
    assert satisfaction.value_sum == pytest.approx(feedback.value)


def test_many_concurrent_first_writes_of_one_user_create_one_satisfaction_row():
    user = UserFactory(username="burst")
    conversation = ConversationFactory(user=user)
    answers = [AssistantMessageFactory(conversation=conversation) for _ in range(6)]

    results = run_together(
        *[lambda a=a: services.feedback_upsert(user=user, message_id=a.id, thumbs="up") for a in answers]
    )

    assert not [r for r in results if isinstance(r, Exception)], results
    assert Feedback.objects.filter(user=user).count() == 6
    assert UserSatisfaction.objects.get(user=user).count == 6


def while_locked(user: Any, change: Callable[[], Any], call: Callable[[], Any]) -> Any:
    """``call`` in a thread while another connection holds ``user``'s satisfaction lock; once ``call``
    is seen waiting for it (so its statement began, and read, before), ``change`` is made in the
    holder's transaction, which then commits. ``call``'s result, or what it raised."""
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                services.satisfaction_lock(user=user)
                locked.set()
                assert release.wait(10)
                change()
        finally:
            connection.close()

    held = threading.Thread(target=holder)
    held.start()
    assert locked.wait(10)
    result: Any = None

    def caller() -> None:
        nonlocal result
        try:
            result = call()
        except Exception as exc:
            result = exc
        finally:
            connection.close()

    calling = threading.Thread(target=caller)
    calling.start()
    deadline = time.monotonic() + 10
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                break
        assert time.monotonic() < deadline, "the call never waited for the lock"
        time.sleep(0.01)
    release.set()
    held.join(10)
    calling.join(10)
    close_old_connections()
    return result


def consistent(user: Any) -> UserSatisfaction:
    """The user's satisfaction, checked against their feedback rows."""
    rows = list(Feedback.objects.filter(user=user))
    satisfaction = UserSatisfaction.objects.get(user=user)
    values = [f.value for f in rows if f.value is not None]
    assert satisfaction.count == len(values)
    assert satisfaction.value_sum == pytest.approx(sum(values))
    assert satisfaction.thumbs_up == sum(f.thumbs == "up" for f in rows)
    assert satisfaction.thumbs_down == sum(f.thumbs == "down" for f in rows)
    assert satisfaction.ratings == sum(f.rating is not None for f in rows)
    assert satisfaction.rating_sum == sum(f.rating or 0 for f in rows)
    return satisfaction


def test_an_upsert_that_read_before_a_change_to_its_feedback_keeps_that_change():
    """The upsert's read shares the lock's statement (``feedback.services.ratings``): when it waited
    while another write of the user's changed the same feedback, it writes nothing on what it read
    and merges into the row as that write left it."""
    user = UserFactory(username="stale-update")
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))
    services.feedback_upsert(user=user, message_id=answer.id, thumbs="up", comment="first")

    result = while_locked(
        user,
        lambda: services.feedback_upsert(user=user, message_id=answer.id, thumbs="down", comment="changed"),
        lambda: services.feedback_upsert(user=user, message_id=answer.id, rating=5),
    )

    assert not isinstance(result, Exception), result
    assert result.created is False
    feedback = Feedback.objects.get(user=user, message=answer)
    assert (feedback.thumbs, feedback.comment, feedback.rating) == ("down", "changed", 5)
    satisfaction = consistent(user)
    assert (satisfaction.thumbs_up, satisfaction.thumbs_down, satisfaction.ratings) == (0, 1, 1)
    assert result.satisfaction.score == satisfaction.score


def test_an_upsert_clearing_what_it_read_as_the_last_field_keeps_what_was_added_meanwhile():
    """ "Nothing left to keep" (``empty_feedback``) is decided again on the feedback as it is under the
    lock: here a comment and a first rating were added while the upsert that clears thumbs waited."""
    user = UserFactory(username="stale-empty")
    conversation = ConversationFactory(user=user)
    commented, rated = (AssistantMessageFactory(conversation=conversation) for _ in range(2))
    services.feedback_upsert(user=user, message_id=commented.id, thumbs="up")

    after_comment = while_locked(
        user,
        lambda: services.feedback_upsert(user=user, message_id=commented.id, comment="kept"),
        lambda: services.feedback_upsert(user=user, message_id=commented.id, thumbs=None),
    )
    after_rating = while_locked(
        user,
        lambda: services.feedback_upsert(user=user, message_id=rated.id, rating=4),
        lambda: services.feedback_upsert(user=user, message_id=rated.id, thumbs=None),
    )

    assert not isinstance(after_comment, Exception), after_comment
    assert not isinstance(after_rating, Exception), after_rating
    first = Feedback.objects.get(user=user, message=commented)
    assert (first.thumbs, first.comment) == (None, "kept")
    assert (after_rating.created, Feedback.objects.get(user=user, message=rated).rating) == (False, 4)
    consistent(user)


def test_an_upsert_that_read_before_its_feedback_was_made_or_deleted_leaves_one_consistent_row():
    user = UserFactory(username="stale-insert")
    conversation = ConversationFactory(user=user)
    made, deleted = (
        AssistantMessageFactory(conversation=conversation),
        AssistantMessageFactory(conversation=conversation),
    )
    gone = services.feedback_upsert(user=user, message_id=deleted.id, step_index=1, rating=1).feedback

    after_insert = while_locked(
        user,
        lambda: services.feedback_upsert(user=user, message_id=made.id, step_index=2, thumbs="up", comment="theirs"),
        lambda: services.feedback_upsert(user=user, message_id=made.id, step_index=2, rating=4),
    )
    after_delete = while_locked(
        user,
        lambda: services.feedback_delete(user=user, feedback_id=gone.id),
        lambda: services.feedback_upsert(user=user, message_id=deleted.id, step_index=1, thumbs="down"),
    )

    assert not isinstance(after_insert, Exception), after_insert
    assert not isinstance(after_delete, Exception), after_delete
    assert (after_insert.created, after_delete.created) == (False, True)
    first = Feedback.objects.get(user=user, message=made)
    assert (first.step.index, first.thumbs, first.comment, first.rating) == (2, "up", "theirs", 4)
    second = Feedback.objects.get(user=user, message=deleted)
    assert (second.pk != gone.pk, second.thumbs, second.rating) == (True, "down", None)
    consistent(user)


def test_an_upsert_that_read_before_its_answer_or_step_was_stored_rates_it():
    """An error the early read gives (no such answer, no such step yet) is confirmed under the lock."""
    user = UserFactory(username="stale-target")
    conversation = ConversationFactory(user=user)
    answer = AssistantMessageFactory(conversation=conversation, steps=1)
    other = AssistantMessageFactory(conversation=conversation)
    services.feedback_upsert(user=user, message_id=other.id, thumbs="up")  # the satisfaction row exists
    new_answer = uuid.uuid4()

    on_new_step = while_locked(
        user,
        lambda: MessageStep.objects.create(message=answer, index=1, content="Step 2."),
        lambda: services.feedback_upsert(user=user, message_id=answer.id, step_index=1, rating=2),
    )
    on_new_answer = while_locked(
        user,
        lambda: AssistantMessageFactory(id=new_answer, conversation=conversation),
        lambda: services.feedback_upsert(user=user, message_id=new_answer, rating=3),
    )

    assert not isinstance(on_new_step, Exception), on_new_step
    assert not isinstance(on_new_answer, Exception), on_new_answer
    assert Feedback.objects.get(user=user, message=answer, step__index=1).rating == 2
    assert Feedback.objects.get(user=user, message_id=new_answer, step=None).rating == 3
    consistent(user)


def a_rated_answer(username: str) -> tuple[Any, Any]:
    """A new user and their answer, which they gave a thumbs up."""
    user = UserFactory(username=username)
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))
    services.feedback_upsert(user=user, message_id=answer.id, thumbs="up")
    return user, answer


def test_an_erasure_waits_for_the_users_write_and_counts_what_it_wrote():
    """``training.erasure`` takes the user's satisfaction lock, as every write of theirs does first."""
    user, answer = a_rated_answer("erased-racer")

    erasure = while_locked(
        user,
        lambda: services.feedback_upsert(user=user, message_id=answer.id, step_index=0, rating=2),
        lambda: user_forget(user=user),
    )

    assert not isinstance(erasure, Exception), erasure
    assert (erasure.counts["feedback"], erasure.counts["satisfaction"]) == (2, 1)
    assert not Feedback.objects.filter(message=answer).exists()
    assert not UserSatisfaction.objects.filter(user_id=user.pk).exists()


def test_a_rating_that_waited_for_an_erasure_of_its_user_is_not_found():
    """The other order: the erasure holds the lock; the rating then finds nothing of the user's."""
    user, answer = a_rated_answer("rated-too-late")

    late = while_locked(
        user,
        lambda: user_forget(user=UserFactory._meta.model.objects.get(pk=user.pk)),
        lambda: services.feedback_upsert(user=user, message_id=answer.id, rating=2),
    )

    assert isinstance(late, NotFound), late
    assert not Feedback.objects.filter(message_id=answer.id).exists()
    assert not UserSatisfaction.objects.filter(user_id=user.pk).exists()


def test_a_concurrent_retry_with_the_same_idempotency_key_writes_once():
    user = UserFactory(username="retrier")
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))
    writes: list[int] = []

    def call() -> tuple[int, dict[str, Any]]:
        result = services.feedback_upsert(user=user, message_id=answer.id, rating=5)
        writes.append(result.feedback.id)
        return 201, {"id": result.feedback.id}

    def attempt() -> tuple[int, dict[str, Any]]:
        return idempotent(user=user, scope="feedback", key="same", payload={"rating": 5}, call=call)

    results = run_together(attempt, attempt, attempt)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(writes) == 1
    assert {r[1]["id"] for r in results} == {writes[0]}
    assert IdempotencyRecord.objects.filter(user=user).count() == 1
    assert UserSatisfaction.objects.get(user=user).ratings == 1


def test_twenty_threads_changing_the_registry_at_once_keep_one_live_version_and_a_replayable_log(settings):
    """Deploys, rollbacks, canary starts, promotions and stops from 20 threads at once: a sampler sees at
    most one live version (and one canary) at every moment, and replaying the event log from the
    starting statuses gives exactly the final statuses."""
    import random

    from models_registry.exceptions import RegistryError
    from models_registry.models import DeploymentEvent, ModelVersion
    from models_registry.services import (
        canary_promote,
        canary_start,
        canary_stop,
        model_version_deploy,
        model_version_make_live,
        model_version_rollback,
    )
    from tests.factories import ModelVersionFactory

    settings.REGISTRY_FOUR_EYES = False
    first = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    versions = [first, *(ModelVersionFactory(number=n, status="approved") for n in range(2, 11))]
    start = {v.pk: v.status for v in ModelVersion.objects.all()}
    start_event = DeploymentEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    ids = [v.pk for v in versions]
    stop_sampling = threading.Event()
    worst: dict[str, int] = {"live": 0, "canary": 0}
    samples = [0]

    def sampler() -> None:
        try:
            while not stop_sampling.is_set():
                counts = dict(
                    ModelVersion.objects.filter(kind="policy", status__in=["live", "canary"])
                    .values_list("status")
                    .annotate(n=Count("id"))
                )
                for status in worst:
                    worst[status] = max(worst[status], counts.get(status, 0))
                samples[0] += 1
        finally:
            connection.close()

    def chaos(seed: int) -> int:
        rng = random.Random(seed)
        done = 0
        for _ in range(8):
            action = rng.choice(["deploy", "rollback", "canary", "promote", "stop"])
            try:
                if action == "deploy":
                    model_version_deploy(version_id=rng.choice(ids), actor=None)
                elif action == "rollback":
                    model_version_rollback(kind="policy", actor=None, reason=f"chaos {seed}")
                elif action == "canary":
                    canary_start(version_id=rng.choice(ids), share=0.3, actor=None)
                elif action == "promote":
                    canary_promote(kind="policy", actor=None)
                else:
                    canary_stop(kind="policy", actor=None, reason=f"chaos {seed}")
                done += 1
            except RegistryError:
                pass  # refused: the state had moved on; that is the point
            finally:
                # Back to the pool between actions, as a request hands its connection back when it ends:
                # 20 threads and the sampler holding one each for the whole run would need 22 of the
                # pool's 20 and wait past its timeout on a slow machine (CI met that).
                connection.close()
        return done

    watcher = threading.Thread(target=sampler)
    watcher.start()
    try:
        results = run_together(*[lambda seed=seed: chaos(seed) for seed in range(20)])
    finally:
        stop_sampling.set()
        watcher.join(timeout=30)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(results) > 20, "the threads got some changes through"
    assert samples[0] > 10
    assert worst["live"] == 1
    assert worst["canary"] <= 1
    replayed = dict(start)
    for event in DeploymentEvent.objects.filter(id__gt=start_event).order_by("id"):
        assert replayed[event.version_id] == event.from_status, f"event {event.pk} starts from a wrong status"
        replayed[event.version_id] = event.to_status
    assert replayed == {v.pk: v.status for v in ModelVersion.objects.all()}
    assert ModelVersion.objects.filter(status="live").count() == 1
