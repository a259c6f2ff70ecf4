"""The bootstrapped tokenizer and models, and the ``bootstrap_models`` command.

The models are trained once per test session with fewer steps than the command uses (the
``bootstrapped`` fixture in conftest.py); the command's own tests swap the training for a copy of them.
"""

from __future__ import annotations

import re
import shutil
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from models_registry.artifacts import sha256_tree
from models_registry.models import ModelVersion
from training.management.commands import bootstrap_models


def run(*args: str) -> str:
    out = StringIO()
    call_command("bootstrap_models", *args, stdout=out)
    return out.getvalue()


# --- The ML bootstrap (no database) ------------------------------------------------------------------


def test_the_policy_answers_a_question_in_numbered_steps_then_stops(bootstrapped):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bootstrapped.policy_dir)
    model = AutoModelForCausalLM.from_pretrained(bootstrapped.policy_dir)
    assert model.dtype == torch.float32
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "How do I boil an egg?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    torch.manual_seed(0)
    output = model.generate(**prompt, max_new_tokens=120, do_sample=False)
    new = output[0, prompt["input_ids"].shape[1] :]
    text = tokenizer.decode(new, skip_special_tokens=True)

    assert re.search(r"^1\. \S", text, re.MULTILINE), text
    assert re.search(r"^2\. \S", text, re.MULTILINE), text
    assert new[-1].item() == tokenizer.eos_token_id, "the answer ends with EOS before max_new_tokens"


def test_the_tokenizer_has_a_chat_template_and_special_tokens(bootstrapped):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bootstrapped.policy_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|endoftext|>",
        "<|im_end|>",
        "<|pad|>",
    )
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # Byte-level: any text survives a round trip, even what the corpus never had.
    odd = "Ünïcödé ✓ 数字 \t tabs"
    assert tokenizer.decode(tokenizer.encode(odd)) == odd


def test_the_reward_model_is_a_scalar_head_sharing_the_tokenizer(bootstrapped):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bootstrapped.reward_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bootstrapped.reward_dir)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(bootstrapped.policy_dir).get_vocab()
    batch = tokenizer(["1. Boil water.", "no"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 1)


def test_the_summary_reports_sizes_losses_and_time(bootstrapped):
    summary = bootstrapped.summary
    assert summary["policy"]["path"] == str(bootstrapped.policy_dir)
    assert summary["policy"]["params"] > 100_000
    assert summary["policy"]["train_loss"] < summary["policy"]["first_loss"] / 4
    assert summary["reward"]["trained"] is True
    assert summary["seconds"] > 0


def test_the_same_seed_gives_the_same_tokenizer_and_weights():
    import torch

    from training.ml.bootstrap import train_policy, train_tokenizer
    from training.ml.chat_corpus import generate_conversations

    assert generate_conversations(3, 50) == generate_conversations(3, 50)
    assert generate_conversations(3, 50) != generate_conversations(4, 50)
    chats = generate_conversations(3, 200)
    first, second = train_tokenizer(chats), train_tokenizer(chats)
    assert first.get_vocab() == second.get_vocab()
    model_a, summary_a = train_policy(first, chats, seed=3, steps=2, batch_size=4)
    model_b, summary_b = train_policy(second, chats, seed=3, steps=2, batch_size=4)
    assert summary_a["train_loss"] == summary_b["train_loss"]
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


# --- The command -------------------------------------------------------------------------------------


@pytest.fixture
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


@pytest.fixture
def copy_instead_of_training(monkeypatch, bootstrapped) -> list[int]:
    """The command's training, replaced by a copy of the session's models (training is tested above)."""
    calls: list[int] = []

    def train_models(policy_dir: Path, reward_dir: Path, *, seed: int, log: Any) -> dict[str, Any]:
        calls.append(seed)
        log("  (test) copying the session's bootstrap")
        shutil.copytree(bootstrapped.policy_dir, policy_dir)
        shutil.copytree(bootstrapped.reward_dir, reward_dir)
        summary = bootstrapped.summary
        return {**summary, "policy": {**summary["policy"], "path": str(policy_dir)}}

    monkeypatch.setattr(bootstrap_models, "train_models", train_models)
    return calls


def test_it_bootstraps_registers_and_makes_both_models_live(db, var_dir, copy_instead_of_training, bootstrapped):
    output = run()

    policy = ModelVersion.objects.get(kind="policy")
    reward = ModelVersion.objects.get(kind="reward")
    assert (policy.label, policy.status, reward.label, reward.status) == ("policy:1", "live", "reward:1", "live")
    assert policy.artifact_path == str(var_dir / "artifacts" / "policy" / "v1")
    assert reward.artifact_path == str(var_dir / "artifacts" / "reward" / "v1")
    assert policy.checksums == sha256_tree(policy.artifact_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= policy.checksums.keys()
    assert reward.checksums == sha256_tree(reward.artifact_path)
    assert policy.deployed_at is not None
    assert policy.metrics["bootstrap"]["params"] == bootstrapped.summary["policy"]["params"]
    assert policy.metrics["bootstrap"]["seed"] == 0
    assert "policy:1 and reward:1 are live" in output
    assert not list((var_dir / "artifacts").glob(".bootstrap-*")), "the staging folder is removed"


def test_running_it_twice_changes_nothing(db, var_dir, copy_instead_of_training):
    run()
    before = list(ModelVersion.objects.values())

    output = run()

    assert "Models are live (policy:1, reward:1); nothing to do" in output
    assert list(ModelVersion.objects.values()) == before
    assert copy_instead_of_training == [0], "trained once"


def test_force_bootstraps_new_versions_and_retires_the_old(db, var_dir, copy_instead_of_training):
    run()
    run("--force", "--seed", "5")

    assert list(ModelVersion.objects.filter(kind="policy").order_by("number").values_list("number", "status")) == [
        (1, "retired"),
        (2, "live"),
    ]
    assert ModelVersion.objects.get(kind="reward", status="live").number == 2
    assert (var_dir / "artifacts" / "policy" / "v2" / "config.json").exists()
    assert copy_instead_of_training == [0, 5]


def test_a_failed_training_registers_nothing_and_leaves_no_folder(db, var_dir, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bootstrap_models, "train_models", broken)
    with pytest.raises(RuntimeError):
        run()
    assert not ModelVersion.objects.exists()
    assert list((var_dir / "artifacts").iterdir()) == []


def test_base_model_registers_a_local_checkpoint_as_the_next_live_policy(db, var_dir, bootstrapped, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(bootstrapped.policy_dir, folder)

    output = run("--base-model", str(folder))

    version = ModelVersion.objects.get(kind="policy")
    assert (version.number, version.status, version.artifact_path) == (1, "live", str(folder))
    assert version.checksums == sha256_tree(folder)
    assert version.metrics["base_model"]["model_type"] == "gpt2"
    assert "Registered policy:1" in output
    assert "is live and is already" in run("--base-model", str(folder))
    assert ModelVersion.objects.count() == 1


def test_base_model_refuses_a_folder_that_is_not_a_model(db, var_dir, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")

    with pytest.raises(CommandError, match=r"not-a-model is not a Hugging Face model folder: its config\.json"):
        run("--base-model", str(folder))
    with pytest.raises(CommandError, match=r"--base-model: .*missing is not a folder\."):
        run("--base-model", str(tmp_path / "missing"))
    assert not ModelVersion.objects.exists()


def test_base_model_refuses_a_model_that_is_not_a_causal_lm(db, var_dir, tmp_path):
    from transformers import BertConfig

    folder = tmp_path / "encoder"
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(folder)
    # BERT has a causal LM head in transformers; an encoder-only type without one:
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"bert"', '"vit"'))

    with pytest.raises(CommandError, match="holds a 'vit' model, which is not a causal language model"):
        run("--base-model", str(folder))
