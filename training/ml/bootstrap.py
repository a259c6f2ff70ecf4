"""Bootstrap a tokenizer, a policy and a reward model from nothing, on a CPU, in about a minute.

No weights can be downloaded where this platform runs, so version 1 of the policy and of the reward
model are trained here on assistant-style conversations generated from a seed: a user asks how to do
something, the assistant answers with numbered steps and stops. The result is tiny and only knows
its templates, but it is a real Hugging Face checkpoint (``save_pretrained``; loads with
``AutoTokenizer`` / ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification``) that streams
numbered steps in the chat, so the whole loop (chat, feedback, training, deploy) runs end to end.

Everything is float32 (a bf16 matmul on these CPUs dies with SIGILL) and seeded: the same seed on the
same machine gives the same tokenizer, the same weights and the same losses.

This module imports no Django.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

from training.ml.chat_corpus import Conversation, generate_conversations, preference_pairs

Log = Callable[[str], None]

BOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # the end of every turn, and the policy's EOS
SPECIAL_TOKENS = [BOS_TOKEN, PAD_TOKEN, IM_START, IM_END]

# ChatML. The {% generation %} markers let trainers mask everything but the assistant's tokens
# (``return_assistant_tokens_mask``); the turn's <|im_end|> is inside them, so the model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Small enough to train in about a minute on two CPU cores, big enough to learn the templates.
DEFAULT_SEED = 0
DEFAULT_CONVERSATIONS = 3000
DEFAULT_VOCAB_SIZE = 2048
DEFAULT_POLICY_STEPS = 240
DEFAULT_REWARD_STEPS = 40
MODEL_SHAPE: dict[str, Any] = {"n_layer": 3, "n_embd": 128, "n_head": 4, "n_positions": 512}
MAX_TRAIN_TOKENS = 192  # longest training sequence; generated conversations fit well inside


def _render(conversation: Conversation) -> str:
    """The chat template, by hand, for tokenizer training (the tokenizer does not exist yet)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in conversation)


# --- Tokenizer ---------------------------------------------------------------------------------------
def train_tokenizer(
    conversations: Sequence[Conversation], *, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme, so any text round-trips) with ChatML special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((_render(c) for c in conversations), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        model_max_length=MODEL_SHAPE["n_positions"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(tokenizer: PreTrainedTokenizerFast, **extra: Any) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # No dropout (the data is templated; dropout was a fifth of the step time) and exact GELU
        # (cheaper than GPT-2's tanh approximation on a CPU).
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu",
        **MODEL_SHAPE,
        **extra,
    )


def _encode_chats(
    tokenizer: PreTrainedTokenizerFast, conversations: Sequence[Conversation]
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per conversation; labels are -100 outside the assistant's turns."""
    rows = []
    for conversation in conversations:
        encoded: Any = tokenizer.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(encoded["input_ids"])[:MAX_TRAIN_TOKENS]
        mask = list(encoded["assistant_masks"])[:MAX_TRAIN_TOKENS]
        rows.append((ids, [tok if keep else -100 for tok, keep in zip(ids, mask, strict=True)]))
    return rows


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _lr_at(step: int, total: int, peak: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- Policy ------------------------------------------------------------------------------------------
def _optimise(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, lr: float) -> float:
    """One optimiser step at learning rate ``lr``, gradients clipped to norm 1; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def train_policy(
    tokenizer: PreTrainedTokenizerFast,
    conversations: Sequence[Conversation],
    *,
    seed: int,
    steps: int = DEFAULT_POLICY_STEPS,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    log: Log | None = None,
) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
    """A GPT-2-style causal LM from config, trained on the assistant turns (next-token loss)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(_config(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    rows = _encode_chats(tokenizer, conversations)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        picks = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        input_ids = _pad([rows[i][0] for i in picks], tokenizer.pad_token_id)
        labels = _pad([rows[i][1] for i in picks], -100)
        attention_mask = _pad([[1] * len(rows[i][0]) for i in picks], 0)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        losses.append(_optimise(model, optimizer, loss, lr=_lr_at(step, steps, learning_rate)))
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"  policy step {step + 1}/{steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    tail = losses[-20:] or [float("nan")]
    summary = {
        "params": _count_params(model),
        "steps": steps,
        "train_loss": round(sum(tail) / len(tail), 4),
        "first_loss": round(losses[0], 4) if losses else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return model, summary


# --- Reward model ----------------------------------------------------------------------------------
def _rewards(
    model: GPT2ForSequenceClassification, tokenizer: PreTrainedTokenizerFast, chats: Sequence[Conversation]
) -> torch.Tensor:
    encoded: list[Any] = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True) for c in chats]
    rows = [list(e["input_ids"])[:MAX_TRAIN_TOKENS] for e in encoded]
    input_ids = _pad(rows, tokenizer.pad_token_id)
    attention_mask = _pad([[1] * len(r) for r in rows], 0)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)


def train_reward(
    tokenizer: PreTrainedTokenizerFast,
    policy: GPT2LMHeadModel,
    *,
    seed: int,
    steps: int = DEFAULT_REWARD_STEPS,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    log: Log | None = None,
) -> tuple[GPT2ForSequenceClassification, dict[str, Any]]:
    """A scalar reward model (``num_labels=1``) whose body starts as a copy of the policy's, trained
    briefly with the pairwise (Bradley-Terry) loss to prefer a right numbered answer over a worse one.
    With ``steps=0`` it is only initialised (the score head is random)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = GPT2ForSequenceClassification(_config(tokenizer, num_labels=1))
    model.transformer.load_state_dict(policy.transformer.state_dict())
    train_pairs = preference_pairs(seed + 1, max(1, steps) * batch_size)
    held_out = preference_pairs(seed + 1_000_001, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        batch = train_pairs[step * batch_size : (step + 1) * batch_size]
        scores = _rewards(model, tokenizer, [c for c, _ in batch] + [r for _, r in batch])
        loss = -F.logsigmoid(scores[: len(batch)] - scores[len(batch) :]).mean()
        losses.append(_optimise(model, optimizer, loss, lr=_lr_at(step, steps, learning_rate)))
        if log and (step + 1) % max(1, steps // 3) == 0:
            log(f"  reward step {step + 1}/{steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    with torch.no_grad():
        scores = _rewards(model, tokenizer, [c for c, _ in held_out] + [r for _, r in held_out])
    accuracy = (scores[: len(held_out)] > scores[len(held_out) :]).float().mean().item()
    tail = losses[-10:]
    summary = {
        "params": _count_params(model),
        "steps": steps,
        "trained": steps > 0,
        "train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "held_out_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return model, summary


# --- Everything --------------------------------------------------------------------------------------
def bootstrap(
    policy_dir: str | Path,
    reward_dir: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    conversations: int = DEFAULT_CONVERSATIONS,
    policy_steps: int = DEFAULT_POLICY_STEPS,
    reward_steps: int = DEFAULT_REWARD_STEPS,
    batch_size: int = 32,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train the tokenizer, the policy and the reward model; ``save_pretrained`` each (with the
    tokenizer beside it) into the two folders. Returns a summary: paths, sizes, losses, seconds."""
    say = log or (lambda _line: None)
    started = time.perf_counter()
    chats = generate_conversations(seed, conversations)
    say(f"Generated {len(chats)} conversations (seed {seed}).")
    tokenizer = train_tokenizer(chats)
    say(f"Trained a byte-level BPE tokenizer: {len(tokenizer)} tokens.")
    policy, policy_summary = train_policy(
        tokenizer, chats, seed=seed, steps=policy_steps, batch_size=batch_size, log=log
    )
    say(f"Trained the policy: {policy_summary['params']:,} parameters, loss {policy_summary['train_loss']}.")
    reward, reward_summary = train_reward(tokenizer, policy, seed=seed, steps=reward_steps, log=log)
    say(f"Trained the reward model: held-out accuracy {reward_summary['held_out_accuracy']:.0%}.")
    for model, folder in ((policy, Path(policy_dir)), (reward, Path(reward_dir))):
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return {
        "seed": seed,
        "conversations": len(chats),
        "vocab_size": len(tokenizer),
        "policy": {"path": str(policy_dir), **policy_summary},
        "reward": {"path": str(reward_dir), **reward_summary},
        "seconds": round(time.perf_counter() - started, 2),
    }
