"""``simulate_users``' simulated users against a real server: what they do (ask over the WebSocket,
regenerate answers they dislike, vote A/B, thumb answers over the REST API) lands in the database as a
person's would; and a small, seeded run of the whole experiment: a cycle trained on their feedback
(reward model, then DPO: the fast policy method on a CPU) raises the share of answers they like, the
monitor promotes its canary, and stops the canary of a candidate trained towards the opposite
preference. The thresholds are scaled down to the small run (dozens of conversations, not hundreds);
the full-size figures and their command are in the README ("Does feedback make the model better?").
Not a timed test: it asserts directions and decisions."""

from __future__ import annotations

import pytest

from feedback.models import Comparison, Feedback, Message
from models_registry.models import Canary, ModelVersion
from tests.e2e.servers import platform_server
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory
from tests.helpers import make_bootstrapped_live
from training.ml.preferences import PREFERENCES
from training.models import Cycle
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


def test_the_loop_raises_the_share_users_like_and_the_monitor_stops_a_worse_model(live, settings, tmp_path):
    settings.VAR_DIR = str(tmp_path / "var")
    settings.REGISTRY_FOUR_EYES = False
    settings.CYCLE_MIN_NEW_RATINGS = 60
    settings.CYCLE_MIN_HELDOUT_PAIRS = 4
    settings.CYCLE_MIN_EVAL_PROMPTS = 8
    settings.MONITOR_MIN_RATINGS = 30
    settings.MONITOR_MIN_VOTES = 8
    # The monitor decides on always-valid intervals, and the candidate's lift varies from run to run
    # (+0.11 to +0.23 in the runs seen): at +0.11, 120 canary conversations (about 115 ratings an arm)
    # left it undecided (CI met it: interval [-0.082, +0.305] against a margin of 0.02). So the canaries
    # may run up to 300 conversations (they end at the monitor's decision, usually by 90), and promoting
    # needs the interval above -0.05 rather than -0.02, a margin sized for a run of this size.
    settings.MONITOR_MARGIN = 0.05
    # The calibration gate judges a handful to a few dozen held-out pairs here (8 when CI met what
    # follows), where one wrong pair of n moves the expected calibration error by about 1/n (the model
    # is confident: margins near 3). A reward model right on 92% of fresh pairs gets two of 8 wrong in
    # 12% of runs (binomial): accuracy 0.75 passes its gate, but the error, about 0.2, sits on the
    # default ceiling of 0.2 and fails it when the two wrong pairs were confident ones (CI met it:
    # 0.222). At 0.4 the calibration gate of a model this confident (its error about 0.95 - accuracy)
    # fails only where the accuracy gate (>= 0.7, left at its default: it also picks the cycle's judge)
    # has already failed. The reward model's learning is asserted below, on 40 fresh pairs.
    settings.CYCLE_MAX_REWARD_ECE = 0.4
    # The held-out pairs are the conversations the split draws (conversation ids are random), and a
    # conversation gives a pair only when its vote is not a tie, so the pairs follow the policy's
    # share: 80 conversations gave 34 pairs at a share of 0.22 but 13 at 0.15, none held out (CI met
    # it; 60 and 25% held out had met it once before). At 160 and 35%, the fewest seen per
    # conversation still give about 26 pairs, fewer than 4 of them held out 0.7% of the time (binomial).
    plan = experiment.Plan(
        preference="closing_offer",
        policy="dpo",
        users=8,
        before=160,
        during=300,
        after=0,
        heldout_pairs=40,
        seed=0,
        config={"reward": {"test_fraction": 0.35}},
    )
    lines: list[str] = []
    report = experiment.run(plan, log=lines.append, workdir=tmp_path / "sim")
    print("\n".join(lines))
    summary = report["summary"]
    assert summary["outcome"].startswith("cycle"), summary["outcome"]

    cycle = Cycle.objects.get()
    assert cycle.status == Cycle.Status.PROMOTED, cycle.reason
    assert all(gate["passed"] for gate in cycle.gates)
    assert ModelVersion.objects.get(pk=cycle.candidate_id).status == ModelVersion.Status.LIVE
    # The users liked more of the candidate's answers than of the bootstrapped policy's.
    assert summary["share_candidate_in_canary"] > summary["share_before"]
    assert report["canary"]["candidate_share"] > report["canary"]["baseline_share"]
    assert report["canary"]["decisions"][-1]["decision"] == "promote"
    # The reward model learnt the preference: on fresh pairs it beats the live one it replaced.
    reward = report["reward_model"]
    assert reward["fresh_pairs"]["accuracy"] > reward["fresh_pairs_live_before"]["accuracy"]

    # The planted worse candidate: liked less, and the monitor (not a person) stopped its canary.
    worse = report["worse"]
    assert worse["stopped"], worse
    assert worse["candidate_share"] < worse["baseline_share"]
    canary = Canary.objects.latest("started_at")
    assert canary.version.label == worse["candidate"]
    assert canary.outcome == Canary.Outcome.STOPPED
    assert canary.ended_by is None
    assert ModelVersion.objects.get(pk=cycle.candidate_id).status == ModelVersion.Status.LIVE
