"""The experiment: simulated users with a hidden preference chat, one improvement cycle runs on what
they said, its candidate is canaried while they keep chatting, and the monitor decides; then,
optionally, a deliberately worse candidate is canaried the same way and must be stopped.

Everything a person would do goes through the platform's real interfaces (a uvicorn server this
process starts: the chat WebSocket, the REST API); everything an operator and a worker would do
runs here through the same services they use (``cycle_create``, the runner, ``monitor_pass``,
``model_version_register``, ``canary_start``). The simulation stands in for the approving person:
the cycle runs with ``CYCLE_AUTO_APPROVE`` on, so a candidate that passes every gate is canaried.

The report (``run``'s result) holds the share of answers meeting the preference before, from the
candidate during its canary and after; the reward model's held-out accuracy (on the cycle's own
held-out split and on a bigger held-out set of fresh pairs); the gates; the monitor's decisions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.test import override_settings

from core.processes import serve_platform
from core.stats import proportion
from feedback.models import Feedback
from models_registry.artifacts import resolve_artifact_path, sha256_tree
from models_registry.models import Canary, ModelVersion
from models_registry.selectors import live_version, running_canary
from models_registry.services import canary_start, model_version_approve, model_version_register
from training.cycle import service as cycles
from training.ml.preferences import PREFERENCES, sampled_pairs
from training.models import Cycle
from training.monitor.service import decision_payload, monitor_pass
from training.simulation.users import SIMULATED_PREFIX, Answer, SimulationError, Simulator, Tally

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    preference: str = "closing_offer"
    policy: str = "ppo"  # the cycle's policy run: ppo (reward model -> PPO), dpo or kto
    users: int = 30
    before: int = 200  # conversations before the cycle: what it learns from
    during: int = 400  # at most, while a canary runs (the monitor usually decides sooner)
    after: int = 100  # after a promotion: everyone on the new policy
    canary_share: float = 0.5
    monitor_every: int = 10  # conversations between monitor passes
    heldout_pairs: int = 200  # fresh pairs to measure the reward model on
    worse: bool = True  # then plant a worse candidate and let the monitor meet it
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the cycle's run configs ({"reward", "policy"})


def check_ready() -> tuple[ModelVersion, ModelVersion]:
    """The live policy and reward model, on a database the simulation may train and deploy on."""
    policy, reward = live_version(ModelVersion.Kind.POLICY), live_version(ModelVersion.Kind.REWARD)
    if policy is None or reward is None:
        raise SimulationError("No live policy and reward model: run `manage.py bootstrap_models` first.")
    from feedback.models import Comparison

    real = Feedback.objects.exclude(user__username__startswith=SIMULATED_PREFIX).count()
    real += Comparison.objects.exclude(user__username__startswith=SIMULATED_PREFIX).count()
    if real:
        raise SimulationError(
            f"This database holds {real} ratings from people: a cycle would train on them and its canary would"
            " answer them. Run the simulation on a database of its own (DATABASE_URL=... manage.py migrate,"
            " then manage.py bootstrap_models)."
        )
    if running_canary(ModelVersion.Kind.POLICY) is not None or cycles.active_cycle() is not None:
        raise SimulationError("A canary or a cycle is running; let it end (or cancel it) first.")
    return policy, reward


def server_environment(var_dir: Path) -> dict[str, str]:
    """The simulation's server: this process's settings, with the per-user limits raised (simulated
    users chat much faster than people) and the live version checked every second."""
    import os

    return {
        **os.environ,
        "VAR_DIR": str(var_dir),
        "CHAT_RATE_PER_MINUTE": "100000",
        "API_THROTTLE_RATE": "off",
        "SERVING_LIVE_CHECK_SECONDS": "1",
    }


def run(plan: Plan, *, log: Log, workdir: Path) -> dict[str, Any]:
    if plan.preference not in PREFERENCES:
        raise SimulationError(f"Unknown preference {plan.preference!r}; choose one of {', '.join(PREFERENCES)}.")
    start_policy, start_reward = check_ready()
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"plan": asdict(plan), "started_with": {"policy": start_policy.label}}
    users = Simulator.users(plan.users)
    with serve_platform(workdir / "server.log", env=server_environment(Path(settings.VAR_DIR))) as base:
        simulator = Simulator(base, preference=plan.preference, seed=plan.seed)
        try:
            started = time.monotonic()
            if plan.before:
                log(f"Before: {plan.before} conversations with {start_policy.label} ({len(users)} users)...")
                before = simulator.chat(users, plan.before, every=25, after=_progress(log, plan.before))
                report["before"] = _phase(before, time.monotonic() - started)
            else:  # go on from the simulated users' feedback already stored (an earlier, interrupted run)
                log(f"Before: the simulated users' answers already stored from {start_policy.label}...")
                report["before"] = {**_phase(_stored_tally(start_policy, plan.preference)), "stored": True}
            log(f"  share meeting '{plan.preference}': {report['before']['share']:.3f}")

            cycle = _cycle(plan, log)
            report["cycle"] = cycles.cycle_report(cycle)
            report["reward_model"] = _reward_figures(plan, cycle, start_policy, start_reward, workdir, log)
            if cycle.status != Cycle.Status.CANARY:
                report["outcome"] = f"the cycle ended {cycle.status}: {cycle.reason}"
                report["summary"] = summary(report)
                return report
            assert cycle.candidate is not None
            candidate = cycle.candidate.label
            during, decisions = _canary_chat(simulator, users, plan, log)
            cycle = cycles.cycle_advance(cycle.pk)
            report["cycle"] = cycles.cycle_report(cycle)
            report["canary"] = {**_phase(during), "candidate": candidate, "decisions": decisions}
            report["canary"]["candidate_share"] = _share(during, candidate)
            report["canary"]["baseline_share"] = _share(during, start_policy.label)
            report["outcome"] = f"cycle {cycle.pk} ended {cycle.status}"
            if cycle.status == Cycle.Status.PROMOTED and plan.after:
                log(f"After: {plan.after} conversations with {candidate}, now live...")
                report["after"] = _phase(simulator.chat(users, plan.after, every=25, after=_progress(log, plan.after)))
            if plan.worse:
                report["worse"] = _worse(simulator, users, plan, cycle, workdir, log)
        finally:
            simulator.close()
    report["summary"] = summary(report)
    return report


# --- The cycle --------------------------------------------------------------------------------------


def _cycle(plan: Plan, log: Log) -> Cycle:
    log(f"Cycle: reward model, then {plan.policy.upper()}, gates, then a canary for {plan.canary_share:.0%}...")
    with override_settings(CYCLE_AUTO_APPROVE=True, CYCLE_CANARY_SHARE=plan.canary_share):
        cycle = cycles.cycle_create(policy_kind=plan.policy, config=plan.config, trained_by="manage.py simulate_users")
        shown: set[str] = set()

        def step(current: Cycle) -> None:
            for stage in current.stages:
                key = f"{stage['name']}:{stage['status']}"
                if key not in shown and stage["status"] == "done":
                    shown.add(key)
                    log(f"  {stage['name']}: {stage['detail'] or 'done'}")

        cycle = cycles.cycle_run_here(cycle.pk, on_step=step)
    for gate in cycle.gates:
        log(f"  gate {gate['name']}: {'pass' if gate['passed'] else 'FAIL'} ({gate['detail']})")
    log(f"  cycle {cycle.pk}: {cycle.get_status_display()}{': ' + cycle.reason if cycle.reason else ''}")
    return cycle


def _reward_figures(
    plan: Plan, cycle: Cycle, start_policy: ModelVersion, start_reward: ModelVersion, workdir: Path, log: Log
) -> dict[str, Any]:
    """The new reward model's accuracy on the cycle's held-out split and, with the live one's for
    contrast, on ``plan.heldout_pairs`` fresh pairs (answers the starting policy samples for new
    questions, one the users would like against one they would not)."""
    from training.ml.evaluation import evaluate_reward

    run = cycle.reward_run
    figures: dict[str, Any] = {"cycle_heldout": (run.metrics.get("eval") if run else None) or {}}
    if run is None or run.output_version is None or not plan.heldout_pairs:
        return figures
    log(f"Reward model: {plan.heldout_pairs} fresh held-out pairs...")
    pairs = sampled_pairs(_folder(start_policy), plan.preference, count=plan.heldout_pairs, seed=plan.seed + 1)
    path = workdir / "heldout_pairs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs), encoding="utf-8")
    for name, version in (("fresh_pairs", run.output_version), ("fresh_pairs_live_before", start_reward)):
        measured = evaluate_reward(model_dir=_folder(version), pairs_path=path)
        if measured.get("pairs"):
            estimate = proportion(round(measured["accuracy"] * measured["pairs"]), measured["pairs"])
            measured["accuracy_interval_95"] = [round(estimate.low or 0, 4), round(estimate.high or 0, 4)]
        figures[name] = {"version": version.label, **measured}
    fresh = figures["fresh_pairs"]
    log(f"  {fresh['version']}: accuracy {fresh.get('accuracy', 0):.3f} on {fresh['pairs']} fresh pairs")
    return figures


# --- Canaries -----------------------------------------------------------------------------------------


def _canary_chat(simulator: Simulator, users: list[Any], plan: Plan, log: Log) -> tuple[Tally, list[dict[str, Any]]]:
    """Chat while a canary runs, a monitor pass (acting) every ``plan.monitor_every`` conversations,
    until the monitor ends the canary or ``plan.during`` conversations are done."""
    decisions: list[dict[str, Any]] = []
    log(f"Canary: the users keep chatting; the monitor looks every {plan.monitor_every} conversations...")

    def monitor(done: int, _tally: Tally) -> bool:
        for decision in monitor_pass(act=True):
            decisions.append({"after_conversations": done, **decision_payload(decision)})
            log(f"  after {done} conversations: {decision.decision}: {decision.reason.splitlines()[0]}")
        return running_canary(ModelVersion.Kind.POLICY) is None

    tally = simulator.chat(users, plan.during, every=plan.monitor_every, after=monitor)
    return tally, decisions


def _worse(simulator: Simulator, users: list[Any], plan: Plan, cycle: Cycle, workdir: Path, log: Log) -> dict[str, Any]:
    """A deliberately worse candidate: the live policy trained with DPO on the cycle's preference
    pairs with chosen and rejected swapped (towards the opposite of what users like), registered,
    approved and canaried as an operator would; the monitor must stop it."""
    from training.ml.config import validate_config
    from training.ml.progress import RunHooks
    from training.ml.trainers import train

    if cycle.reward_run is None or cycle.reward_run.dataset is None:
        return {"skipped": "the cycle built no dataset to flip"}
    if running_canary(ModelVersion.Kind.POLICY) is not None:
        return {"skipped": "the cycle's canary is still running (the monitor had not decided)"}
    live = live_version(ModelVersion.Kind.POLICY)
    assert live is not None
    data = workdir / "worse-data" / "preference"
    data.mkdir(parents=True, exist_ok=True)
    source = Path(cycle.reward_run.dataset.path) / "preference"
    for split in ("train", "test"):
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        flipped = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in rows]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flipped), encoding="utf-8")
    output = Path(settings.VAR_DIR) / "models" / f"simulation-worse-{int(time.time())}"
    log(f"Worse: DPO from {live.label} on the cycle's pairs flipped (the opposite preference)...")
    result = train(
        "dpo",
        config=validate_config("dpo", {"seed": plan.seed}),
        data_dir=data,
        base_dir=_folder(live),
        output_dir=output,
        hooks=RunHooks(log=lambda line: None),
    )
    version = model_version_register(
        kind=ModelVersion.Kind.POLICY,
        artifact_path=str(output),
        checksums=sha256_tree(output),
        metrics={"train": result.metrics, "planted": "DPO on flipped preference pairs"},
        actor=None,
        reason="simulate_users: a deliberately worse candidate (trained towards the opposite preference)",
    )
    reason = "simulate_users: the planted worse candidate"
    model_version_approve(version_id=version.pk, actor=None, reason=reason)
    canary = canary_start(version_id=version.pk, share=plan.canary_share, actor=None, reason=reason)
    log(f"  {version.label} answers {canary.share:.0%} of new conversations against {live.label}")
    tally, decisions = _canary_chat(simulator, users, plan, log)
    canary.refresh_from_db()
    return {
        **_phase(tally),
        "candidate": version.label,
        "baseline": live.label,
        "candidate_share": _share(tally, version.label),
        "baseline_share": _share(tally, live.label),
        "decisions": decisions,
        "outcome": canary.outcome,
        "stopped": canary.outcome == Canary.Outcome.STOPPED,
    }


# --- Figures --------------------------------------------------------------------------------------


def _folder(version: ModelVersion) -> Path:
    return resolve_artifact_path(version.artifact_path)


def _stored_tally(version: ModelVersion, preference: str) -> Tally:
    """What the simulated users already saw from ``version``: its stored answers to them, judged by
    the same preference, with their thumbs and votes."""
    from feedback.models import Comparison, Message

    likes = PREFERENCES[preference]
    tally = Tally()
    simulated = {"conversation__user__username__startswith": SIMULATED_PREFIX}
    answers = Message.objects.filter(role=Message.Role.ASSISTANT, model_version=version, **simulated)
    for content in answers.values_list("content", flat=True).iterator():
        tally.add(Answer(id="", text=content, version=version.label, prompt_id=""), likes(content))
    tally.thumbs = Feedback.objects.filter(model_version=version, user__username__startswith=SIMULATED_PREFIX).count()
    votes = Comparison.objects.filter(user__username__startswith=SIMULATED_PREFIX)
    tally.votes = votes.filter(chosen_version=version, rejected_version=version).count()
    if not tally.answers:
        raise SimulationError(f"No stored answers of {version.label} to simulated users: use --before N.")
    return tally


def _share(tally: Tally, version: str) -> float | None:
    share = tally.share(version)
    return round(share, 4) if share is not None else None


def _phase(tally: Tally, seconds: float | None = None) -> dict[str, Any]:
    estimate = proportion(sum(tally.liked.values()), sum(tally.answers.values()))
    phase = {
        **tally.as_dict(),
        "answers_total": estimate.n,
        "share": round(estimate.value, 4) if estimate.value is not None else None,
        "share_interval_95": [round(estimate.low or 0, 4), round(estimate.high or 0, 4)] if estimate.n else None,
    }
    if seconds is not None:
        phase["seconds"] = round(seconds, 1)
    return phase


def _progress(log: Log, total: int) -> Callable[[int, Tally], bool]:
    def report(done: int, tally: Tally) -> bool:
        share = tally.share()
        log(f"  {done}/{total} conversations, {sum(tally.answers.values())} answers, share {share or 0:.3f}")
        return False

    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures."""
    before = (report.get("before") or {}).get("share")
    canary = report.get("canary") or {}
    after = (report.get("after") or {}).get("share")
    candidate = canary.get("candidate_share")
    reward = report.get("reward_model") or {}
    worse = report.get("worse") or {}
    best_after = after if after is not None else candidate
    return {
        "share_before": before,
        "share_candidate_in_canary": candidate,
        "share_after": after,
        "rise_points": round(100 * (best_after - before), 1) if best_after is not None and before is not None else None,
        "reward_accuracy_cycle_heldout": (reward.get("cycle_heldout") or {}).get("accuracy"),
        "reward_pairs_cycle_heldout": (reward.get("cycle_heldout") or {}).get("pairs"),
        "reward_accuracy_fresh": (reward.get("fresh_pairs") or {}).get("accuracy"),
        "reward_pairs_fresh": (reward.get("fresh_pairs") or {}).get("pairs"),
        "gates": {g["name"]: g["passed"] for g in (report.get("cycle") or {}).get("gates", [])},
        "monitor_decision": (canary.get("decisions") or [{}])[-1].get("decision"),
        "outcome": report.get("outcome"),
        "worse_stopped": worse.get("stopped"),
        "worse_decision": (worse.get("decisions") or [{}])[-1].get("decision"),
    }
