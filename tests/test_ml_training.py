"""The TRL wrappers (reward, DPO, KTO, PPO), the progress/cancel callback and evaluation, on the
session's tiny bootstrapped models. Plain Python: no database."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from training.ml import evaluation
from training.ml.callbacks import HooksCallback, clean_number, format_log_line
from training.ml.chat_corpus import generate_conversations, preference_pairs
from training.ml.config import TrainConfig
from training.ml.evaluation import calibration, evaluate_policy, evaluate_reward, evaluate_rewards, score_ids
from training.ml.progress import Progress, RunHooks
from training.ml.trainers import build_reward_config, train

TINY = {"batch_size": 4, "max_length": 128, "max_new_tokens": 8, "max_steps": 4, "learning_rate": 1e-4}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pair_rows(seed: int, count: int) -> list[dict[str, Any]]:
    """Same question; chosen is the right numbered answer, rejected a clearly worse one."""
    return [
        {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
        for chosen, rejected in preference_pairs(seed, count)
    ]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ml-data")
    pairs = _pair_rows(11, 24)
    _write(root / "pref" / "train.jsonl", pairs[:16])
    _write(root / "pref" / "test.jsonl", pairs[16:])
    separable = _pair_rows(12, 48)
    _write(root / "separable" / "train.jsonl", separable[:40])
    _write(root / "separable" / "test.jsonl", separable[40:])
    unpaired = []
    for i, (chosen, rejected) in enumerate(preference_pairs(13, 16)):
        chat = chosen if i % 2 == 0 else rejected
        unpaired.append({"prompt": chat[:-1], "completion": chat[-1:], "label": i % 2 == 0})
    _write(root / "unpaired" / "train.jsonl", unpaired)
    _write(root / "unpaired" / "test.jsonl", [])  # an empty test split is allowed
    _write(root / "good-only" / "train.jsonl", [dict(r, label=True) for r in unpaired])
    prompts = [{"prompt": chat[:-1]} for chat in generate_conversations(14, 24)]
    _write(root / "prompts" / "train.jsonl", prompts[:16])
    _write(root / "prompts" / "test.jsonl", prompts[16:])
    _write(root / "empty" / "train.jsonl", [])
    _write(root / "empty" / "test.jsonl", [])
    return {p.name: p for p in root.iterdir()}


class Recorder:
    """RunHooks that remember everything; ``stop_after`` makes ``should_stop`` say yes from that step."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.reports: list[Progress] = []
        self.lines: list[str] = []
        self.asked = 0
        self.stop_after = stop_after

    def should_stop(self) -> bool:
        self.asked += 1
        return self.stop_after is not None and self.asked >= self.stop_after

    def hooks(self) -> RunHooks:
        return RunHooks(
            report=self.reports.append, should_stop=self.should_stop, log=self.lines.append, heartbeat_seconds=0.0
        )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_clean_checkpoint(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names
    assert "config.json" in names
    assert "tokenizer.json" in names
    assert not [n for n in names if n.startswith("checkpoint-") or "optimizer" in n or n.endswith((".bin", ".pt"))]
    assert all(p.is_file() for p in folder.iterdir())
    assert all(t.dtype == torch.float32 for t in _weights(folder).values())


def _assert_changed(base: Path, output: Path, *, skip: tuple[str, ...] = ()) -> None:
    before, after = _weights(base), _weights(output)
    shared = [k for k in after if k in before and not k.startswith(skip)]
    assert shared
    assert any(not torch.equal(before[k], after[k]) for k in shared)


def _assert_json_metrics(metrics: dict[str, Any]) -> None:
    json.dumps(metrics, allow_nan=False)
    for value in metrics.values():
        assert value is None or isinstance(value, str | int | float)
        assert not (isinstance(value, float) and not math.isfinite(value))


def _assert_progress(recorder: Recorder, steps: int) -> None:
    progress_steps = [p.step for p in recorder.reports]
    assert progress_steps == sorted(progress_steps)
    assert recorder.reports[-1].step == recorder.reports[-1].total_steps == steps
    assert any(line.startswith(f"step 1/{steps} ") for line in recorder.lines)


# --- Training ----------------------------------------------------------------------------------------
def test_reward_training_raises_accuracy_and_writes_a_clean_checkpoint(bootstrapped, datasets, tmp_path):
    pairs = datasets["separable"] / "test.jsonl"
    # A fresh head on the policy's body (base is a causal LM), seeded like train() seeds it.
    output = tmp_path / "reward"
    recorder = Recorder()
    config = TrainConfig(**{**TINY, "max_steps": 10, "learning_rate": 1e-3, "batch_size": 4})
    torch.manual_seed(config.seed)
    fresh = AutoModelForSequenceClassification.from_pretrained(bootstrapped.policy_dir, num_labels=1)
    fresh.save_pretrained(tmp_path / "fresh")
    AutoTokenizer.from_pretrained(bootstrapped.policy_dir).save_pretrained(tmp_path / "fresh")
    before = evaluate_reward(model_dir=tmp_path / "fresh", pairs_path=pairs, max_length=128)

    result = train(
        "reward",
        config=config,
        data_dir=datasets["separable"],
        base_dir=bootstrapped.policy_dir,
        output_dir=output,
        hooks=recorder.hooks(),
    )

    after = evaluate_reward(model_dir=output, pairs_path=pairs, max_length=128)
    assert after["accuracy"] == 1.0
    assert after["accuracy"] > before["accuracy"]
    assert after["mean_margin"] > before["mean_margin"]
    assert not result.stopped
    assert result.steps == 10
    assert result.metrics["steps"] == 10
    assert result.metrics["samples"] == 40
    assert result.metrics["train_loss"] > 0
    assert "accuracy" in result.metrics
    assert not [k for k in result.metrics if k.startswith("eval_")]  # held-out pairs: evaluate_reward's job
    _assert_json_metrics(result.metrics)
    _assert_clean_checkpoint(output)
    _assert_changed(tmp_path / "fresh", output)
    loaded = AutoModelForSequenceClassification.from_pretrained(output)
    assert loaded.config.num_labels == 1
    _assert_progress(recorder, 10)


def test_reward_training_continues_a_reward_model(bootstrapped, datasets, tmp_path):
    output = tmp_path / "reward"
    result = train(
        "reward",
        config=TrainConfig(**TINY),
        data_dir=datasets["pref"],
        base_dir=bootstrapped.reward_dir,
        output_dir=output,
        hooks=RunHooks(),
    )
    assert result.steps == 4
    _assert_changed(bootstrapped.reward_dir, output)
    _assert_clean_checkpoint(output)


def test_dpo_trains_a_policy(bootstrapped, datasets, tmp_path):
    output = tmp_path / "dpo"
    recorder = Recorder()
    result = train(
        "dpo",
        config=TrainConfig(**TINY),
        data_dir=datasets["pref"],
        base_dir=bootstrapped.policy_dir,
        output_dir=output,
        hooks=recorder.hooks(),
    )
    assert not result.stopped
    assert result.steps == 4
    for key in ("train_loss", "rewards_margins", "rewards_accuracies", "eval_loss", "seconds", "samples"):
        assert key in result.metrics, key
    _assert_json_metrics(result.metrics)
    _assert_clean_checkpoint(output)
    assert (output / "generation_config.json").is_file()
    _assert_changed(bootstrapped.policy_dir, output)
    assert AutoModelForCausalLM.from_pretrained(output).config.eos_token_id is not None
    _assert_progress(recorder, 4)


def test_kto_trains_on_unpaired_rows_with_an_empty_test_split(bootstrapped, datasets, tmp_path):
    output = tmp_path / "kto"
    recorder = Recorder()
    result = train(
        "kto",
        config=TrainConfig(**TINY),
        data_dir=datasets["unpaired"],
        base_dir=bootstrapped.policy_dir,
        output_dir=output,
        hooks=recorder.hooks(),
    )
    assert result.steps == 4
    assert "kl" in result.metrics
    assert result.metrics["test_rows"] == 0
    assert "eval_note" in result.metrics
    assert not [k for k in result.metrics if k.startswith("eval_") and k != "eval_note"]
    _assert_json_metrics(result.metrics)
    _assert_clean_checkpoint(output)
    _assert_changed(bootstrapped.policy_dir, output)
    AutoModelForCausalLM.from_pretrained(output)
    _assert_progress(recorder, 4)


def test_ppo_trains_the_policy_only(bootstrapped, datasets, tmp_path):
    output = tmp_path / "ppo"
    recorder = Recorder()
    config = TrainConfig(**{**TINY, "max_steps": 3, "learning_rate": 1e-4})
    result = train(
        "ppo",
        config=config,
        data_dir=datasets["prompts"],
        base_dir=bootstrapped.policy_dir,
        output_dir=output,
        hooks=recorder.hooks(),
        reward_dir=bootstrapped.reward_dir,
    )
    assert not result.stopped
    assert result.steps == 3
    for key in ("mean_score", "kl", "first_mean_score", "steps", "samples", "seconds"):
        assert key in result.metrics, key
    assert result.metrics["samples"] == 12
    _assert_json_metrics(result.metrics)
    _assert_clean_checkpoint(output)
    weights = _weights(output)
    assert not [k for k in weights if "score" in k or "value" in k]
    assert set(weights) <= set(_weights(bootstrapped.policy_dir))
    _assert_changed(bootstrapped.policy_dir, output)
    model = AutoModelForCausalLM.from_pretrained(output)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert AutoTokenizer.from_pretrained(output).padding_side == "right"
    _assert_progress(recorder, 3)


# --- Cancel ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "data", "steps"), [("dpo", "pref", 6), ("ppo", "prompts", 5)])
def test_stop_request_stops_after_that_step_and_writes_nothing(bootstrapped, datasets, tmp_path, kind, data, steps):
    output = tmp_path / "out"
    recorder = Recorder(stop_after=2)
    config = TrainConfig(**{**TINY, "max_steps": steps})
    result = train(
        kind,
        config=config,
        data_dir=datasets[data],
        base_dir=bootstrapped.policy_dir,
        output_dir=output,
        hooks=recorder.hooks(),
        reward_dir=bootstrapped.reward_dir,
    )
    assert result.stopped
    assert result.steps == 2
    assert not output.exists()
    assert recorder.reports[-1].step == 2
    assert recorder.reports[-1].total_steps == steps
    assert any("stop requested" in line for line in recorder.lines)
    _assert_json_metrics(result.metrics)


# --- Errors ------------------------------------------------------------------------------------------
def test_kto_without_undesirable_examples_is_refused(bootstrapped, datasets, tmp_path):
    with pytest.raises(ValueError, match="both desirable and undesirable"):
        train(
            "kto",
            config=TrainConfig(**TINY),
            data_dir=datasets["good-only"],
            base_dir=bootstrapped.policy_dir,
            output_dir=tmp_path / "out",
            hooks=RunHooks(),
        )


def test_ppo_needs_a_reward_model(bootstrapped, datasets, tmp_path):
    with pytest.raises(ValueError, match="reward model"):
        train(
            "ppo",
            config=TrainConfig(**TINY),
            data_dir=datasets["prompts"],
            base_dir=bootstrapped.policy_dir,
            output_dir=tmp_path / "out",
            hooks=RunHooks(),
        )


@pytest.mark.parametrize("kind", ["reward", "dpo", "kto", "ppo"])
def test_empty_train_file_is_refused(bootstrapped, datasets, tmp_path, kind):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(
            kind,
            config=TrainConfig(**TINY),
            data_dir=datasets["empty"],
            base_dir=bootstrapped.policy_dir,
            output_dir=tmp_path / "out",
            hooks=RunHooks(),
            reward_dir=bootstrapped.reward_dir,
        )
    assert not (tmp_path / "out").exists()


def test_fewer_rows_than_a_batch_is_refused(bootstrapped, datasets, tmp_path):
    with pytest.raises(ValueError, match="16 preference pairs, fewer than one batch needs \\(32\\)"):
        train(
            "dpo",
            config=TrainConfig(**{**TINY, "batch_size": 32}),
            data_dir=datasets["pref"],
            base_dir=bootstrapped.policy_dir,
            output_dir=tmp_path / "out",
            hooks=RunHooks(),
        )


def test_bad_rows_and_busy_output_are_refused(bootstrapped, datasets, tmp_path):
    _write(tmp_path / "bad" / "train.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "x"}])
    with pytest.raises(ValueError, match="line 1: missing rejected"):
        train(
            "reward",
            config=TrainConfig(**TINY),
            data_dir=tmp_path / "bad",
            base_dir=bootstrapped.policy_dir,
            output_dir=tmp_path / "out",
            hooks=RunHooks(),
        )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        train(
            "dpo",
            config=TrainConfig(**TINY),
            data_dir=datasets["pref"],
            base_dir=bootstrapped.policy_dir,
            output_dir=tmp_path / "busy",
            hooks=RunHooks(),
        )


# --- Shared config, callback ----------------------------------------------------------------------------
def test_reward_config_is_float32_cpu_friendly(tmp_path):
    args = build_reward_config(TrainConfig(**TINY), tmp_path)
    assert args.max_length == 128
    assert args.per_device_train_batch_size == 4
    assert args.max_steps == 4
    assert args.save_strategy == "no"
    assert args.report_to == []
    assert args.dataloader_num_workers == 0
    assert args.fp16 is False
    assert args.bf16 is False or torch.cuda.is_available()
    assert args.gradient_checkpointing is False
    assert args.seed == args.data_seed == 0


def test_callback_throttles_reports_and_formats_logs():
    now = [0.0]
    reports: list[Progress] = []
    hooks = RunHooks(report=reports.append, heartbeat_seconds=10.0)
    callback = HooksCallback(hooks, clock=lambda: now[0])
    state: Any = type("State", (), {"global_step": 0, "max_steps": 5, "epoch": 0.0})()
    control: Any = type("Control", (), {"should_training_stop": False})()
    callback.on_train_begin(None, state, control)  # type: ignore[arg-type]
    for step in range(1, 6):
        state.global_step, now[0] = step, step * 3.0
        callback.on_step_end(None, state, control)  # type: ignore[arg-type]
    callback.on_train_end(None, state, control)  # type: ignore[arg-type]
    assert [r.step for r in reports] == [0, 4, 5]
    assert format_log_line(3, 10, {"epoch": 1, "grad_norm": 2.0, "loss": 0.5123, "learning_rate": 4.1e-5}) == (
        "step 3/10 loss 0.5123 learning_rate 4.10e-05 grad_norm 2"
    )
    assert clean_number(float("nan")) is None
    assert clean_number(torch.tensor(2.5)) == 2.5


# --- Evaluation ----------------------------------------------------------------------------------------
def test_evaluate_reward_on_indistinguishable_pairs(bootstrapped, datasets, tmp_path):
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"]} for r in _pair_rows(15, 6)]
    result = evaluate_reward(model_dir=bootstrapped.reward_dir, pairs_path=_write(tmp_path / "same.jsonl", rows))
    assert result["pairs"] == 6
    assert result["accuracy"] == 0.0  # strictly greater: ties are not wins
    assert abs(result["mean_margin"]) < 1e-4
    assert result["calibration_ece"] < 1e-3
    assert abs(result["brier"] - 0.25) < 1e-3
    assert evaluate_reward(model_dir=bootstrapped.reward_dir, pairs_path=datasets["empty"] / "test.jsonl") == {
        "pairs": 0
    }


def test_evaluate_reward_on_real_pairs(bootstrapped, datasets):
    result = evaluate_reward(model_dir=bootstrapped.reward_dir, pairs_path=datasets["pref"] / "test.jsonl")
    assert result["pairs"] == 8
    assert 0.0 <= result["accuracy"] <= 1.0
    assert 0.0 <= result["calibration_ece"] <= 1.0
    assert 0.0 <= result["brier"] <= 1.0


class _Widths(torch.nn.Module):
    """A reward model that remembers the width of each batch it is given."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner, self.config, self.widths = inner, inner.config, []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        self.widths.append(input_ids.shape[1])
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_score_ids_scores_each_conversation_once_in_batches_of_similar_length(bootstrapped):
    inner = AutoModelForSequenceClassification.from_pretrained(bootstrapped.reward_dir, num_labels=1).eval()
    assert inner.config.pad_token_id is not None
    lengths = [9, 3, 17, 5, 3, 12, 9, 1]
    rows = [[(7 * i + j) % 50 + 5 for j in range(n)] for i, n in enumerate(lengths)]
    rows[6] = list(rows[0])  # the same conversation twice
    one_by_one = [score_ids(inner, [r], batch_size=1)[0] for r in rows]
    model = _Widths(inner)
    batched = score_ids(model, rows, batch_size=3)
    assert batched == pytest.approx(one_by_one, abs=1e-5)  # in the rows' order
    assert batched[6] == batched[0]  # scored once: an exact tie
    # Seven distinct rows by length (1, 3, 3 | 5, 9, 12 | 17). In file order the batches would be 17, 12
    # and 9 wide; sorted but with the repeated row scored again (1, 3, 3 | 5, 9, 9 | 12, 17), 3, 9, 17.
    assert model.widths == [3, 12, 17]
    inner.config.pad_token_id = None
    with pytest.raises(ValueError, match="no pad_token_id"):
        score_ids(inner, rows)


def test_evaluate_rewards_renders_once_for_models_sharing_a_tokenizer(bootstrapped, datasets, tmp_path, monkeypatch):
    pairs = datasets["pref"] / "test.jsonl"
    separate = [evaluate_reward(model_dir=bootstrapped.reward_dir, pairs_path=pairs)]
    # A copy saved again, as training saves the model it made: the same tokenizer, other files.
    copy = tmp_path / "copy"
    AutoModelForSequenceClassification.from_pretrained(bootstrapped.reward_dir, num_labels=1).save_pretrained(copy)
    AutoTokenizer.from_pretrained(bootstrapped.reward_dir).save_pretrained(copy)
    separate.append(evaluate_reward(model_dir=copy, pairs_path=pairs))
    rendered = []
    original = evaluation._render_ids
    monkeypatch.setattr(evaluation, "_render_ids", lambda *a, **k: rendered.append(1) or original(*a, **k))
    together = evaluate_rewards([bootstrapped.reward_dir, copy], pairs_path=pairs)
    assert len(rendered) == 2 * 8  # chosen and rejected of the 8 pairs, once for both models
    for one, other in zip(together, separate, strict=True):
        assert one["pairs"] == other["pairs"] == 8
        assert one["accuracy"] == other["accuracy"]
        assert one["mean_margin"] == pytest.approx(other["mean_margin"], abs=1e-5)
    assert evaluate_rewards([copy, copy], pairs_path=datasets["empty"] / "test.jsonl") == [{"pairs": 0}] * 2


def test_calibration_of_confident_right_answers():
    ece, brier = calibration([20.0, 20.0])
    assert ece < 1e-6
    assert brier < 1e-6
    ece, brier = calibration([-20.0])
    assert ece > 0.99
    assert brier > 0.99


def test_evaluate_policy_against_itself(bootstrapped, datasets):
    result = evaluate_policy(
        model_dir=bootstrapped.policy_dir,
        reference_dir=bootstrapped.policy_dir,
        reward_dir=bootstrapped.reward_dir,
        prompts_path=datasets["prompts"] / "test.jsonl",
        max_prompts=5,
        max_new_tokens=12,
        seed=3,
    )
    keys = {"prompts", "mean_reward", "reference_mean_reward", "win_rate", "kl", "mean_length", "reference_mean_length"}
    assert set(result) == keys
    assert result["prompts"] == 5
    assert result["win_rate"] == 0.5
    assert abs(result["kl"]) < 1e-4
    assert result["mean_reward"] == result["reference_mean_reward"]
    assert 0 < result["mean_length"] <= 12
    assert evaluate_policy(
        model_dir=bootstrapped.policy_dir,
        reference_dir=bootstrapped.policy_dir,
        reward_dir=bootstrapped.reward_dir,
        prompts_path=datasets["empty"] / "test.jsonl",
    ) == {"prompts": 0}


def test_evaluate_policy_sees_a_different_candidate(bootstrapped, datasets, tmp_path):
    candidate = tmp_path / "candidate"
    train(
        "dpo",
        config=TrainConfig(**{**TINY, "learning_rate": 1e-3}),
        data_dir=datasets["pref"],
        base_dir=bootstrapped.policy_dir,
        output_dir=candidate,
        hooks=RunHooks(),
    )
    result = evaluate_policy(
        model_dir=candidate,
        reference_dir=bootstrapped.policy_dir,
        reward_dir=bootstrapped.reward_dir,
        prompts_path=datasets["prompts"] / "test.jsonl",
        max_prompts=8,
        max_new_tokens=12,
    )
    assert result["prompts"] == 8
    assert result["kl"] > 0  # the candidate puts more mass on its own greedy answers than the reference does
    assert 0.0 <= result["win_rate"] <= 1.0
