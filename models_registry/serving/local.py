"""The local backend: a transformers checkpoint in this process, generating in a worker thread.

The model is loaded once per process and shared by every request. ``model.generate`` blocks, so it
runs in a thread; a streamer hands each decoded piece to the event loop, and a stopping criterion
watches a ``threading.Event`` that the consumer sets when it stops listening, so an abandoned answer
stops within one token instead of running to ``max_new_tokens``. At most ``SERVING_MAX_CONCURRENT``
generations run at once per event loop; the others wait their turn.

Float32 on the CPU (a bf16 matmul on these CPUs dies with SIGILL); bfloat16 only on CUDA.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import torch
from django.conf import settings
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from models_registry.artifacts import resolve_artifact_path, verify_checksums
from models_registry.exceptions import ChecksumMismatch
from models_registry.models import ModelVersion
from models_registry.serving.base import (
    Sampling,
    ServedPolicy,
    Usage,
    clean_messages,
    generation_slots,
    max_new_tokens_for,
    sampling,
)
from models_registry.serving.errors import ServingError

logger = logging.getLogger(__name__)

# For checkpoints without a chat template (a plain causal LM registered with --base-model).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.triggered = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self.event.is_set():
            self.triggered = True
        done = torch.full((input_ids.shape[0],), self.triggered, dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, done)


class _LoopStreamer(TextStreamer):
    """transformers' ``TextIteratorStreamer`` for asyncio (like its ``AsyncTextIteratorStreamer``), but
    safe when the loop is gone by the time the thread posts its last piece."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.new_tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            self.new_tokens += 1
        super().put(value)

    def post(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.post(text)
        if stream_end:
            self.post(_END)


class LocalPolicy(ServedPolicy):
    def __init__(
        self, *, version_id: int, label: str, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel
    ) -> None:
        super().__init__(version_id=version_id, label=label)
        self.tokenizer = tokenizer
        self.model: Any = model  # transformers' generate() is too dynamic for its stubs
        config = model.config
        self.context_size = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        )

    @classmethod
    def load(cls, version: ModelVersion) -> LocalPolicy:
        """Verify the artifact's checksums, then load it. Blocking: call it in a worker thread."""
        folder = resolve_artifact_path(version.artifact_path)
        try:
            verify_checksums(folder, version.checksums)
        except ChecksumMismatch as exc:
            raise ServingError(exc.message, code=exc.code) from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            cuda = torch.cuda.is_available()
            model: Any = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.bfloat16 if cuda else torch.float32, local_files_only=True
            )
        except Exception as exc:  # OSError, ValueError, safetensors' own errors...: all mean "cannot load"
            raise ServingError(f"{folder} is not a loadable causal LM: {exc}", code="model_load_failed") from exc
        model.to("cuda" if cuda else "cpu").eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        return cls(version_id=version.id, label=version.label, tokenizer=tokenizer, model=model)

    def _encode(self, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[dict[str, torch.Tensor], int]:
        """The prompt's tensors and the token budget. The oldest turns (never a leading system prompt)
        are dropped until the prompt and the answer fit the context; as a last resort the prompt is cut
        from the left."""
        max_new_tokens = min(max_new_tokens, max(1, self.context_size // 2))
        budget = self.context_size - max_new_tokens
        first = 1 if messages[0]["role"] == "system" and len(messages) > 1 else 0
        while True:
            try:
                encoded: Any = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
                )
            except Exception as exc:  # a template may refuse a role order (Jinja raise_exception)
                raise ServingError(f"The conversation cannot be formatted: {exc}", code="invalid_messages") from exc
            length = encoded["input_ids"].shape[1]
            if length <= budget or len(messages) - first <= 1:
                break
            messages = messages[:first] + messages[first + 1 :]
        device = self.model.device
        inputs = {name: encoded[name][:, -budget:].to(device) for name in ("input_ids", "attention_mask")}
        return inputs, max_new_tokens

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int | None = None,
        options: Sampling | None = None,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        chat = clean_messages(messages)
        if options is not None and options.max_new_tokens is not None:
            max_new_tokens = options.max_new_tokens
        inputs, limit = self._encode(chat, max_new_tokens_for(max_new_tokens))
        if usage is not None:
            usage.prompt_tokens = int(inputs["input_ids"].shape[1])
        slots = generation_slots()
        await slots.acquire()
        loop = asyncio.get_running_loop()
        streamer = _LoopStreamer(self.tokenizer, loop)
        stop = threading.Event()

        def release() -> None:  # the slot is held for as long as the thread generates
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(slots.release)

        thread = threading.Thread(
            target=self._generate,
            args=(inputs, limit, sampling(options), streamer, stop, release),
            name=f"serving-generate-{self.label}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            slots.release()
            raise
        timeout = settings.SERVING_TOKEN_TIMEOUT_SECONDS
        queue = streamer.queue
        try:
            while True:
                try:
                    item = queue.get_nowait()  # a token already posted: no timer
                except asyncio.QueueEmpty:
                    try:
                        # asyncio.timeout, not wait_for: no task per token (a quarter of this loop's CPU)
                        async with asyncio.timeout(timeout):
                            item = await queue.get()
                    except TimeoutError:
                        raise ServingError("The model took too long to answer.", code="generation_timeout") from None
                if item is _END:
                    if usage is not None:
                        usage.completion_tokens = streamer.new_tokens
                        usage.hit_limit = streamer.new_tokens >= limit
                    return
                if isinstance(item, _Failed):
                    raise ServingError("The model failed while answering.", code="generation_failed") from item.error
                assert isinstance(item, str)
                yield item
        finally:
            # Reached on the last token, on aclose(), and on cancellation of the consuming task.
            stop.set()

    def _generate(
        self,
        inputs: dict[str, torch.Tensor],
        max_new_tokens: int,
        options: dict[str, float],
        streamer: _LoopStreamer,
        stop: threading.Event,
        release: Callable[[], None],
    ) -> None:
        do_sample = options["temperature"] > 0
        stopper = _StopOnEvent(stop)
        try:
            with torch.inference_mode():
                self.model.generate(
                    **inputs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    **({"temperature": options["temperature"], "top_p": options["top_p"]} if do_sample else {}),
                    pad_token_id=self.tokenizer.pad_token_id,
                )
        except Exception as exc:
            logger.exception("generation with %s failed", self.label)
            streamer.post(_Failed(exc))
        finally:
            if stopper.triggered:
                logger.info("%s stopped generating: the consumer left after %d tokens", self.label, streamer.new_tokens)
            streamer.post(_END)
            release()
