"""Continuous batching: batch invariance, admission while others run, streaming, abort, accounting."""

from __future__ import annotations

import asyncio
import threading

import pytest

import loomlm

PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog. Then the dog",
    "In 1492,",
    "A list of fruits: apple, banana,",
    "import numpy as np\nimport torch\n\ndef main():\n    x = ",
    "Translate to French: good morning ->",
    "Q: What is 12 times 12?\nA:",
    "The history of the Roman Empire spans many centuries, beginning with the founding of Rome and",
]
GREEDY = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}


def test_batch_invariance(idle_engine):
    together = idle_engine.generate(PROMPTS, GREEDY)
    assert len({len(idle_engine.tokenizer(p)["input_ids"]) for p in PROMPTS}) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, together):
        alone = idle_engine.generate(prompt, GREEDY)
        assert alone["output_ids"] == out["output_ids"], prompt
        assert alone["text"] == out["text"]


def test_request_joins_running_batch(idle_engine):
    before = idle_engine.get_stats()
    stream = idle_engine.generate(
        "Count from one to one hundred: one, two,",
        {"max_new_tokens": 120, "temperature": 0, "ignore_eos": True},
        stream=True,
    )
    chunks = [next(stream) for _ in range(5)]
    assert not any(c["finished"] for c in chunks)
    short = idle_engine.generate("Hello", {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert short["meta_info"]["completion_tokens"] == 4
    rest = list(stream)
    # The long request was still running when the short one finished: it joined and left the batch.
    assert len(chunks) + len(rest) == 120 and rest[-1]["finished"]
    after = idle_engine.get_stats()
    assert after["max_running_batch"] >= 2
    assert after["requests_finished"] - before["requests_finished"] == 2


def test_stream_increments_concatenate_to_text(idle_engine):
    params = {"max_new_tokens": 20, "temperature": 0}
    whole = idle_engine.generate("Tell me about the moon.", params)
    chunks = list(idle_engine.generate("Tell me about the moon.", params, stream=True))
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert sum((c["output_ids"] for c in chunks), []) == whole["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == whole["meta_info"]["finish_reason"]


def test_stream_meta_holds_each_chunks_own_logprobs(idle_engine):
    """As SGLang streams: a chunk's output (top) logprobs are its own tokens', with the running count in
    `output_token_logprobs_length`; input logprobs come in every chunk; the non-streamed meta is whole."""
    args = dict(
        sampling_params={"max_new_tokens": 12, "temperature": 0},
        return_logprob=True,
        top_logprobs_num=2,
        logprob_start_len=0,
    )
    whole = idle_engine.generate("The moon is", **args)
    chunks = list(idle_engine.generate("The moon is", stream=True, **args))
    metas = [c["meta_info"] for c in chunks]
    assert sum((m["output_token_logprobs"] for m in metas), []) == whole["meta_info"]["output_token_logprobs"]
    assert sum((m["output_top_logprobs"] for m in metas), []) == whole["meta_info"]["output_top_logprobs"]
    for chunk, meta in zip(chunks, metas):
        assert [e[1] for e in meta["output_token_logprobs"]] == chunk["output_ids"]
        assert meta["input_token_logprobs"] == whole["meta_info"]["input_token_logprobs"]
    lengths = [m["output_token_logprobs_length"] for m in metas]
    assert lengths == [len(sum((c["output_ids"] for c in chunks[: i + 1]), [])) for i in range(len(chunks))]
    assert whole["meta_info"]["output_token_logprobs_length"] == whole["meta_info"]["completion_tokens"]


def test_generate_signatures_are_sglangs(engine):
    import inspect

    names = [
        "self",
        "prompt",
        "sampling_params",
        "input_ids",
        "return_logprob",
        "top_logprobs_num",
        "logprob_start_len",
        "stream",
        "rid",
        "cache_salt",
        "priority",
    ]
    for method in (engine.generate, engine.async_generate):
        assert list(inspect.signature(type(engine).__dict__[method.__name__]).parameters) == names
    assert inspect.iscoroutinefunction(engine.async_generate)
    with pytest.raises(TypeError):
        engine.generate("hi", promt="typo")


def test_stream_closed_early_frees_memory(idle_engine):
    stream = idle_engine.generate("Write a long story.", {"max_new_tokens": 200, "ignore_eos": True}, stream=True)
    next(stream)
    stream.close()  # aborts the request; the fixture checks every slot came back


def test_abort_running_requests(engine):
    results = {}

    def run(name, prompt):
        results[name] = engine.generate(prompt, {"max_new_tokens": 300, "ignore_eos": True}, rid=name)

    threads = [threading.Thread(target=run, args=(f"r{i}", f"Story number {i}:")) for i in range(3)]
    before = engine.get_stats()["decode_passes"]
    for t in threads:
        t.start()
    import time

    def all_decoding() -> bool:  # every request known to the scheduler, and decoding under way
        sched = engine.core.scheduler
        return all(sched.find(f"r{i}") is not None for i in range(3)) and engine.core.stats.decode_passes > before

    deadline = time.monotonic() + 60
    while not engine.core.call(all_decoding) and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(3):
        engine.abort(f"r{i}")
    for t in threads:
        t.join(timeout=60)
    assert all(results[f"r{i}"]["meta_info"]["finish_reason"]["type"] == "abort" for i in range(3))
    engine.idle_integrity()


def test_async_generate(idle_engine):
    async def main():
        single = await idle_engine.async_generate("Paris is", {"max_new_tokens": 8, "temperature": 0})
        many = await asyncio.gather(
            *[idle_engine.async_generate(p, {"max_new_tokens": 8, "temperature": 0}) for p in PROMPTS[:4]]
        )
        chunks = [
            c
            async for c in await idle_engine.async_generate(
                "Paris is", {"max_new_tokens": 8, "temperature": 0}, stream=True
            )
        ]
        return single, many, chunks

    single, many, chunks = asyncio.run(main())
    assert "".join(c["text"] for c in chunks) == single["text"]
    assert [m["output_ids"] for m in many] == [
        o["output_ids"] for o in idle_engine.generate(PROMPTS[:4], {"max_new_tokens": 8, "temperature": 0})
    ]


def test_input_ids_and_max_new_tokens_zero(idle_engine):
    ids = idle_engine.tokenizer("The capital of France is")["input_ids"]
    by_text = idle_engine.generate("The capital of France is", {"max_new_tokens": 5, "temperature": 0})
    by_ids = idle_engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 5, "temperature": 0})
    assert by_ids["output_ids"] == by_text["output_ids"]
    none = idle_engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 0})
    assert none["output_ids"] == [] and none["meta_info"]["finish_reason"]["type"] == "length"


def test_small_pool_queues_requests():
    """A pool too small for all requests at once serves them in turn, with no slot lost."""
    import loomlm

    with loomlm.Engine(max_total_tokens=100, max_running_requests=4, random_seed=0) as eng:
        outs = eng.generate(
            [f"Number {i} is" for i in range(10)], {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True}
        )
        assert all(o["meta_info"]["completion_tokens"] == 20 for o in outs)
        assert (
            outs[0]["output_ids"]
            == eng.generate("Number 0 is", {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True})["output_ids"]
        )
        eng.idle_integrity()


def test_mixed_chunks_give_the_same_greedy_tokens(idle_engine):
    """enable_mixed_chunk: the short requests decode inside the long prompt's chunk steps (an extend
    batch over the real model), with the same greedy tokens as separate steps."""
    story = "The lighthouse keeper counted the ships that passed each night. " * 12
    prompts = ["Hi", "List three colours:", "2 + 2 =", story + "How many ships"]
    params = {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True}
    expected = [o["output_ids"] for o in idle_engine.generate(prompts, params)]
    with loomlm.Engine(max_total_tokens=4000, chunked_prefill_size=32, enable_mixed_chunk=True) as mixed:
        got = [o["output_ids"] for o in mixed.generate(prompts, params)]
        assert mixed.get_stats()["mixed_passes"] >= 3  # the story's later chunks carried the decodes
        mixed.idle_integrity()
    assert got == expected
