"""``simulate_users``' simulated users against a real server: what they do (ask over the WebSocket,
regenerate answers they dislike, vote A/B, thumb answers over the REST API) lands in the database as a
person's would, and the share they like is what the stored answers say. The whole experiment (a cycle
trained on their feedback, its canary and a planted worse candidate) is too long for CI: its figures
and command are in the README ("Does feedback make the model better?")."""

from __future__ import annotations

import pytest

from feedback.models import Comparison, Feedback, Message
from tests.e2e.servers import platform_server
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory
from tests.helpers import make_bootstrapped_live
from training.ml.preferences import PREFERENCES
from training.simulation import experiment
from training.simulation.users import SIMULATED_PREFIX, SimulationError, Simulator

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(bootstrapped):
    return make_bootstrapped_live(bootstrapped)


def test_simulated_users_chat_rate_and_vote_through_the_platform(live, tmp_path):
    users = Simulator.users(3)
    with platform_server(tmp_path, "simulation", CHAT_RATE_PER_MINUTE="10000") as server:
        simulator = Simulator(server, preference="closing_offer", seed=1, curious=1.0)
        try:
            tally = simulator.chat(users, 4)
        finally:
            simulator.close()

    answers = Message.objects.filter(
        role=Message.Role.ASSISTANT, conversation__user__username__startswith=SIMULATED_PREFIX
    )
    assert answers.count() == sum(tally.answers.values()) >= 4
    assert set(answers.values_list("status", flat=True)) == {"complete"}
    assert set(tally.answers) == {live["policy"].label}
    likes = PREFERENCES["closing_offer"]
    assert sum(tally.liked.values()) == sum(likes(a.content) for a in answers)
    # Every thumb is a stored rating that says what the user thought of that answer.
    ratings = Feedback.objects.filter(user__username__startswith=SIMULATED_PREFIX)
    assert ratings.count() == tally.thumbs > 0
    for rating in ratings.select_related("message"):
        assert rating.thumbs == ("up" if likes(rating.message.content) else "down")
    # Each conversation with two answers or more (curious=1.0: every one) ends in one A/B vote.
    assert Comparison.objects.filter(user__username__startswith=SIMULATED_PREFIX).count() == tally.votes == 4
    # The experiment can go on from these stored answers (--before 0) with the same share.
    stored = experiment._stored_tally(live["policy"], "closing_offer")
    assert stored.answers == tally.answers
    assert stored.liked == tally.liked


def test_the_experiment_refuses_a_database_with_peoples_feedback(live):
    person = UserFactory(username="a-person")
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=person), model_version=live["policy"])
    Feedback.objects.create(user=person, message=answer, model_version=live["policy"], thumbs="up")
    with pytest.raises(SimulationError, match="1 ratings from people"):
        experiment.check_ready()
