"""The gates a cycle's candidate must pass before anyone may deploy it. No Django.

Each gate is a rule with a threshold (a setting) and yields its figure and pass/fail; a cycle whose
gate fails ends "not deployed, because ..." with the failing gates' details.

- ``new_feedback``: enough ratings given since the previous cycle to learn something new;
- ``reward_accuracy``: the new reward model's accuracy on the held-out pairs is at least a floor, on
  enough held-out pairs to mean something;
- ``reward_vs_live``: and not below the live reward model's on the same pairs;
- ``reward_calibration``: its expected calibration error is under a ceiling;
- ``policy_win_rate``: the new policy beats the live policy on held-out prompts at least this often,
  judged by the live reward model (which did not train it), or by the cycle's new one when the live
  one no longer agrees with users (the service decides; the gate names the judge);
- ``policy_kl``, ``policy_length``: it has not drifted too far (KL to the live policy, and its mean
  answer length against the live policy's): the guards against over-optimising the reward model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    min_new_ratings: int = 100
    min_reward_accuracy: float = 0.7
    min_heldout_pairs: int = 20
    max_reward_ece: float = 0.2
    min_win_rate: float = 0.55
    min_eval_prompts: int = 16
    max_kl: float = 20.0
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    figure: float | int | None
    threshold: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_feedback(new_ratings: int, t: Thresholds) -> Gate:
    return Gate(
        "new_feedback",
        new_ratings >= t.min_new_ratings,
        new_ratings,
        f">= {t.min_new_ratings}",
        f"{new_ratings} ratings given since the previous cycle (at least {t.min_new_ratings} are needed)",
    )


def reward_gates(evaluation: dict[str, Any], baseline: dict[str, Any] | None, t: Thresholds) -> list[Gate]:
    pairs = int(evaluation.get("pairs") or 0)
    accuracy = evaluation.get("accuracy")
    gates = []
    if pairs < t.min_heldout_pairs or accuracy is None:
        gates.append(
            Gate(
                "reward_accuracy",
                False,
                accuracy,
                f">= {t.min_reward_accuracy} on >= {t.min_heldout_pairs} held-out pairs",
                f"only {pairs} held-out preference pairs: too few to judge the reward model"
                f" (at least {t.min_heldout_pairs}); collect more side-by-side votes and ratings",
            )
        )
    else:
        gates.append(
            Gate(
                "reward_accuracy",
                accuracy >= t.min_reward_accuracy,
                round(accuracy, 4),
                f">= {t.min_reward_accuracy}",
                f"held-out accuracy {accuracy:.3f} on {pairs} pairs",
            )
        )
    live = baseline.get("accuracy") if baseline else None
    if live is None:
        gates.append(Gate("reward_vs_live", True, None, ">= the live reward model's", "no live reward model to beat"))
    elif accuracy is not None:
        gates.append(
            Gate(
                "reward_vs_live",
                accuracy >= live,
                round(accuracy - live, 4),
                ">= 0 (new - live)",
                f"{accuracy:.3f} against the live reward model's {live:.3f} on the same {pairs} pairs",
            )
        )
    ece = evaluation.get("calibration_ece")
    gates.append(
        Gate(
            "reward_calibration",
            ece is not None and ece <= t.max_reward_ece,
            round(ece, 4) if ece is not None else None,
            f"<= {t.max_reward_ece}",
            f"expected calibration error {ece:.3f}" if ece is not None else "not measured",
        )
    )
    return gates


def policy_gates(evaluation: dict[str, Any], t: Thresholds, *, judge: str = "the live reward model") -> list[Gate]:
    prompts = int(evaluation.get("prompts") or 0)
    if prompts < t.min_eval_prompts:
        why = evaluation.get("skipped") or f"only {prompts} held-out prompts (at least {t.min_eval_prompts})"
        return [Gate("policy_win_rate", False, None, f">= {t.min_win_rate}", f"not measured: {why}")]
    win_rate, kl = evaluation["win_rate"], evaluation["kl"]
    length, live_length = evaluation["mean_length"], evaluation["reference_mean_length"]
    ratio = length / live_length if live_length else None
    return [
        Gate(
            "policy_win_rate",
            win_rate >= t.min_win_rate,
            round(win_rate, 4),
            f">= {t.min_win_rate}",
            f"beats the live policy on {win_rate:.0%} of {prompts} held-out prompts, judged by {judge}",
        ),
        Gate(
            "policy_kl",
            kl <= t.max_kl,
            round(kl, 3),
            f"<= {t.max_kl}",
            f"KL to the live policy {kl:.2f} nats per answer",
        ),
        Gate(
            "policy_length",
            ratio is not None and t.min_length_ratio <= ratio <= t.max_length_ratio,
            round(ratio, 3) if ratio is not None else None,
            f"between {t.min_length_ratio} and {t.max_length_ratio}",
            f"mean answer length {length:.1f} tokens against the live policy's {live_length:.1f}",
        ),
    ]


def failed_summary(gates: list[Gate]) -> str:
    """'not deployed, because ...' of the gates that failed."""
    failed = [gate for gate in gates if not gate.passed]
    return "not deployed, because " + "; ".join(f"{g.name}: {g.detail}" for g in failed) if failed else ""
