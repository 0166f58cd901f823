"""The embedded SmolLM2 engine, for real: it answers, counts tokens, and queues requests."""

from __future__ import annotations

import asyncio
import threading
import time

import llama_cpp
import pytest

from backend.providers.base import ChatRequest, ProviderError, Usage, collect
from backend.providers.embedded_llama import EmbeddedEngine, default_model_path, load_llama
from backend.providers.params import PersonaParams, to_llama_kwargs
from backend.providers.registry import chat_provider, get_embedded
from backend.providers.tokens import count_tokens
from tests.factories import make_settings
from tests.providers.aio import first_text, items, run

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]


def _request(messages=QUESTION, **kw) -> ChatRequest:
    kw.setdefault("max_tokens", 24)
    return ChatRequest(messages=messages, model="smollm2", **kw)


def _wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return get_embedded()


def test_the_embedded_model_really_answers_with_real_token_counts(engine, tmp_path):
    settings = make_settings("sqlite://", tmp_path, embedded_queue_size=5)
    provider = chat_provider("embedded", settings=settings)
    assert provider is engine and engine.queue_size == 5

    events = items(provider.stream(_request(params=PersonaParams(temperature=0.2, seed=7))))
    *deltas, usage = events
    text = "".join(deltas)

    assert isinstance(usage, Usage) and all(isinstance(d, str) for d in deltas)
    assert text.strip(), "the model produced no text"
    # the chat template wraps the question in role markers, so the prompt is longer than the words
    assert usage.prompt_tokens == engine.count_tokens(QUESTION) == count_tokens(QUESTION) > 8
    assert 0 < usage.completion_tokens <= 24


def test_prompt_and_completion_counts_match_llama_cpps_own_usage(engine):
    llm = engine.load()
    _, usage = run(engine.complete(_request(COUNTING, params=PersonaParams(temperature=0), max_tokens=10)))
    reference = llm.create_chat_completion(messages=COUNTING, temperature=0, max_tokens=10)
    assert usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert usage.completion_tokens == reference["usage"]["completion_tokens"] == 10


def test_seed_makes_answers_reproducible_and_num_predict_caps_output(engine):
    params = PersonaParams(temperature=1.0, top_k=50, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=1234)
    first, u1 = run(engine.complete(_request(COUNTING, params=params, max_tokens=20)))
    second, u2 = run(engine.complete(_request(COUNTING, params=params, max_tokens=20)))
    assert first == second and u1 == u2

    _, capped = run(
        engine.complete(_request(COUNTING, params=PersonaParams(num_predict=4, temperature=0), max_tokens=20))
    )
    assert capped.completion_tokens == 4


def test_stop_sequence_ends_the_answer(engine):
    text, _ = run(engine.complete(_request(COUNTING, params=PersonaParams(temperature=0, stop=["5"]), max_tokens=60)))
    free, _ = run(engine.complete(_request(COUNTING, params=PersonaParams(temperature=0), max_tokens=60)))
    assert "5" in free and "5" not in text
    assert free.startswith(text)


def test_mirostat_and_repeat_last_n_run_and_the_context_setting_is_restored(engine):
    llm = engine.load()
    before = llm.last_n_tokens_size
    params = PersonaParams(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.2, repeat_last_n=16, tfs_z=0.9, seed=3)
    text, usage = run(engine.complete(_request(params=params)))
    assert text.strip() and usage.completion_tokens > 0
    assert llm.last_n_tokens_size == before


def test_num_ctx_is_clamped_and_an_oversized_prompt_is_refused(engine):
    long_dialog = [{"role": "user", "content": "word " * 120}]
    with pytest.raises(ProviderError) as caught:
        run(engine.complete(_request(long_dialog, params=PersonaParams(num_ctx=64))))
    assert caught.value.status == 400 and "context holds 64" in str(caught.value)
    # a num_ctx above the loaded 2048 is clamped to it, not an error
    text, _ = run(engine.complete(_request(params=PersonaParams(num_ctx=100000), max_tokens=4)))
    assert text


def test_llama_kwargs_translation():
    params = PersonaParams(
        temperature=0.5,
        top_p=0.9,
        top_k=30,
        min_p=0.02,
        repeat_penalty=1.2,
        seed=9,
        stop=["###"],
        tfs_z=0.8,
        mirostat=1,
        mirostat_eta=0.3,
        mirostat_tau=6.0,
        num_ctx=1024,
        repeat_last_n=64,
        num_predict=50,
    )
    assert to_llama_kwargs(params, 100) == {
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 30,
        "min_p": 0.02,
        "repeat_penalty": 1.2,
        "seed": 9,
        "stop": ["###"],
        "mirostat_mode": 1,
        "mirostat_eta": 0.3,
        "mirostat_tau": 6.0,
    }
    assert to_llama_kwargs(None, 64) == {"max_tokens": 64}
    assert to_llama_kwargs(PersonaParams(num_predict=-2), 64) == {"max_tokens": 64}


def test_concurrent_requests_all_complete(engine):
    results: list[tuple[str, Usage]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        try:
            answer = run(engine.complete(_request([{"role": "user", "content": f"Say a word about the number {n}."}])))
            with lock:
                results.append(answer)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 6
    assert all(text.strip() and usage.completion_tokens > 0 for text, usage in results)


def test_requests_wait_their_turn_and_only_a_full_queue_is_busy():
    engine = EmbeddedEngine(queue_size=2)

    async def scenario() -> list[str]:
        running = engine.stream(_request(COUNTING, params=PersonaParams(temperature=0), max_tokens=200))
        assert isinstance(await first_text(running), str)  # holds the model
        waiters = [asyncio.ensure_future(engine.complete(_request(max_tokens=6))) for _ in range(2)]
        while engine.waiting < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(ProviderError) as caught:
            await engine.complete(_request())
        assert caught.value.status == 503 and "busy" in str(caught.value)
        assert not any(w.done() for w in waiters)  # the queued requests are still waiting, not failed
        await running.aclose()  # the client went away: the model is released to the next in line
        return [text for text, _ in await asyncio.wait_for(asyncio.gather(*waiters), 60)]

    answers = run(scenario())
    assert len(answers) == 2 and all(answers)
    assert _wait_until(lambda: engine.waiting == 0)
    assert run(collect(engine.stream(_request(max_tokens=4))))[0]


def test_load_llama_finds_the_packaged_model():
    path = default_model_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    vocab = load_llama(path, vocab_only=True, n_ctx=64)
    assert len(vocab.tokenize(b"hello world", add_bos=False)) == 2


# --- batched decoding (issue 9): several streams in one llama_batch -----------------------

STARS = [{"role": "user", "content": "Write a short paragraph about the stars."}]
GREEDY = PersonaParams(temperature=0)


def _cells_free(engine: EmbeddedEngine) -> bool:
    """No sequence holds KV cells any more (every finished or cancelled one was removed)."""
    scheduler = engine._scheduler
    assert scheduler is not None and scheduler.ctx is not None
    return not scheduler.active and all(
        llama_cpp.llama_memory_seq_pos_max(scheduler.memory, seq) == -1 for seq in range(scheduler.slots)
    )


def test_concurrent_greedy_streams_write_what_a_lone_stream_writes():
    # flash attention makes a sequence's logits independent of where its cells sit in the
    # shared cache, and each prompt is decoded alone, so streams started together are
    # bit-identical to one alone (see the module docstring for the interleaving that is not)
    engine = EmbeddedEngine(parallel=4)
    lone = run(engine.complete(_request(STARS, params=GREEDY, max_tokens=48)))

    async def together() -> list[tuple[str, Usage]]:
        return await asyncio.gather(*(engine.complete(_request(STARS, params=GREEDY, max_tokens=48)) for _ in range(4)))

    answers = run(together())
    assert lone[0].strip() and lone[1].completion_tokens == 48
    assert answers == [lone] * 4
    assert _wait_until(lambda: engine.waiting == 0) and _cells_free(engine)


def test_cancelling_one_of_several_streams_stops_it_and_the_others_complete():
    engine = EmbeddedEngine(parallel=3)

    async def scenario() -> tuple[list[tuple[str, Usage]], int]:
        streams = [engine.stream(_request(COUNTING, params=GREEDY, max_tokens=40)) for _ in range(3)]
        firsts = [await first_text(s) for s in streams]  # all three are decoding together
        assert all(isinstance(f, str) for f in firsts) and engine.waiting == 3
        await streams[1].aclose()  # this client went away
        assert _wait_until(lambda: engine.waiting == 2)  # its slot is free before the others end
        late = await engine.complete(_request(params=GREEDY, max_tokens=4))  # and takes a newcomer
        rest = [await collect(s) for s in (streams[0], streams[2])]
        return [(firsts[0] + rest[0][0], rest[0][1]), (firsts[2] + rest[1][0], rest[1][1]), late], engine.waiting

    (first, third, late), _ = run(scenario())
    assert first == third and first[1].completion_tokens == 40 and late[0]
    assert _wait_until(lambda: engine.waiting == 0) and _cells_free(engine)


def test_parallel_one_is_the_old_engine_one_request_at_a_time_with_its_text():
    engine = EmbeddedEngine(parallel=1, queue_size=1)
    dialog = [{"role": "user", "content": "How do you say 'thank you' in Chinese, Japanese and Korean?"}]
    llm = engine.load()

    def reference(max_tokens: int) -> dict:
        llm.reset()  # evaluate the whole prompt afresh (a reused prefix is decoded differently)
        return llm.create_chat_completion(messages=dialog, temperature=0, max_tokens=max_tokens)  # type: ignore[return-value]

    text, usage = run(engine.complete(_request(dialog, params=GREEDY, max_tokens=48)))
    same = reference(48)
    assert text == same["choices"][0]["message"]["content"]  # the same numerics, the same UTF-8 text
    assert (usage.prompt_tokens, usage.completion_tokens) == (same["usage"]["prompt_tokens"], 48)
    assert same["usage"]["completion_tokens"] == 48
    assert any(ord(c) > 127 for c in text), "the answer should cross multi-byte characters"
    # at 40 tokens the answer ends inside a character: llama-cpp-python samples one more token
    # to finish it (41 for a max of 40); the engine stops at the cap and drops the half character
    cut, cut_usage = run(engine.complete(_request(dialog, params=GREEDY, max_tokens=40)))
    over = reference(40)
    assert over["usage"]["completion_tokens"] == 41 and cut_usage.completion_tokens == 40
    assert over["choices"][0]["message"]["content"].startswith(cut) and text.startswith(cut)

    async def scenario() -> str:
        running = engine.stream(_request(COUNTING, params=GREEDY, max_tokens=200))
        assert isinstance(await first_text(running), str)
        waiter = asyncio.ensure_future(engine.complete(_request(max_tokens=4)))
        while engine.waiting < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(ProviderError) as caught:  # one running + one waiting fills a queue of 1
            await engine.complete(_request())
        assert caught.value.status == 503
        assert engine._scheduler is not None and len(engine._scheduler.active) == 1 and not waiter.done()
        await running.aclose()
        return (await asyncio.wait_for(waiter, 60))[0]

    assert run(scenario())
    assert _wait_until(lambda: engine.waiting == 0)


def test_with_parallel_slots_only_a_full_queue_is_busy():
    engine = EmbeddedEngine(parallel=2, queue_size=1)

    async def scenario() -> str:
        running = [engine.stream(_request(COUNTING, params=GREEDY, max_tokens=200)) for _ in range(2)]
        for stream in running:
            assert isinstance(await first_text(stream), str)  # both decode at once
        waiter = asyncio.ensure_future(engine.complete(_request(max_tokens=4)))
        while engine.waiting < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(ProviderError) as caught:
            await engine.complete(_request())
        assert caught.value.status == 503 and "busy" in str(caught.value)
        assert not waiter.done()  # the third waits for a slot; it is not refused
        for stream in running:
            await stream.aclose()
        return (await asyncio.wait_for(waiter, 60))[0]

    assert run(scenario())
    assert _wait_until(lambda: engine.waiting == 0) and _cells_free(engine)


def test_the_process_wide_engine_takes_embedded_parallel_from_settings(tmp_path):
    engine = get_embedded(make_settings("sqlite://", tmp_path, embedded_parallel=3))
    assert engine.parallel == 3
    get_embedded(make_settings("sqlite://", tmp_path))
    assert engine.parallel == 8
