"""Tensor parallelism: the split plan (property-tested), and a TP=2 engine (two processes over gloo on
CPU) that gives TP=1's greedy tokens and logprobs (within 1e-4) on the default model in float32, with
the radix cache, chunked prefill and a grammar; the triton attention backend under TP on a tiny dummy
model; a rank that dies fails the step with its reason and leaves no slot behind.

On GPUs: `LOOMLM_TP_TEST_DEVICE=cuda pytest tests/runtime/test_tensor_parallel.py` runs the same engine
checks with NCCL on two GPUs."""

from __future__ import annotations

import os

DEVICE = os.environ.get("LOOMLM_TP_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    # Before any kernel module is imported (the Triton ops are decorated once per process); the ranks
    # started later inherit it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import loomlm  # noqa: E402
from loomlm.runtime.distributed.plan import TensorParallelPlan, check_splittable  # noqa: E402
from loomlm.runtime.models.config import ModelConfig  # noqa: E402
from tests.conftest import NO_GRAMMAR_DEADLINE  # noqa: E402

GREEDY = {"temperature": 0, "max_new_tokens": 12}


def _config(heads: int, kv_heads: int, inter: int = 64, vocab: int = 100) -> ModelConfig:
    return ModelConfig(
        architecture="llama",
        vocab_size=vocab,
        hidden_size=heads * 8,
        intermediate_size=inter,
        num_layers=1,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=8,
        max_position_embeddings=64,
    )


@st.composite
def _splittable(draw):
    kv = draw(st.integers(1, 8))
    heads = kv * draw(st.integers(1, 6))
    size = draw(st.integers(1, 12))
    return heads, kv, size, draw(st.integers(1, 300)), draw(st.integers(12, 500))


@given(_splittable())
def test_every_head_column_and_token_has_exactly_one_owner(case):
    heads, kv, size, inter, vocab = case
    config = _config(heads, kv, inter, vocab)
    try:
        check_splittable(config, size)
    except ValueError as exc:
        assert "tp_size" in str(exc)
        assert size > kv and (size % kv or heads // kv < size // kv)
        return
    plans = [TensorParallelPlan.for_rank(config, r, size) for r in range(size)]
    group = heads // kv
    for field, total in (("q_heads", heads), ("intermediate", inter), ("vocab", vocab)):
        covered = sorted(i for p in plans for i in range(*getattr(p, field)))
        assert covered == list(range(total)), field
    for p in plans:
        assert p.num_heads >= 1 and 1 <= p.num_kv_heads <= p.max_kv_heads
        # each query head's KV head is on the same rank, and the local grouping is uniform
        assert all(p.kv_heads[0] <= q // group < p.kv_heads[1] for q in range(*p.q_heads))
        assert p.num_heads % p.num_kv_heads == 0
    assert {k for p in plans for k in range(*p.kv_heads)} == set(range(kv))


def test_the_default_models_heads_split_two_and_one():
    config = _config(9, 3)
    assert [TensorParallelPlan.for_rank(config, r, 2).q_heads for r in range(2)] == [(0, 6), (6, 9)]
    assert [TensorParallelPlan.for_rank(config, r, 2).kv_heads for r in range(2)] == [(0, 2), (2, 3)]
    # more ranks than KV heads: each KV head on two ranks, its 3 query heads shared 2 + 1
    assert [TensorParallelPlan.for_rank(config, r, 6).q_heads for r in range(2)] == [(0, 2), (2, 3)]
    with pytest.raises(ValueError, match="tp_size 4 does not fit the model's 3 KV heads"):
        check_splittable(config, 4)


def _engine(**overrides) -> loomlm.Engine:
    settings = dict(
        max_total_tokens=3000,
        max_running_requests=8,
        device=DEVICE,
        dtype="float32",
        cpu_threads=1,
        chunked_prefill_size=64,
        grammar_timeout_s=NO_GRAMMAR_DEADLINE,
    )
    return loomlm.Engine(**{**settings, **overrides})


def _run(engine: loomlm.Engine) -> list[dict]:
    story = "Once upon a time, in a village by the sea, there lived an old fisherman and his cat. " * 4
    calls = [
        (["The capital of France is", "def fibonacci(n):"], GREEDY),
        ([story + "The cat's name was"], GREEDY),  # longer than the chunk: prefilled in chunks
        ([story + "Every morning the fisherman"], GREEDY),  # the story is a cached prefix now
        (["My phone number is "], {**GREEDY, "regex": r"\d{3}-\d{4}"}),
    ]
    outs = []
    for prompts, params in calls:
        outs += engine.generate(prompts, params, return_logprob=True, top_logprobs_num=2)
    return outs


def test_tp2_gives_tp1s_greedy_tokens_and_logprobs():
    with _engine() as single:
        expected = _run(single)
    with _engine(tp_size=2) as split:
        got = _run(split)
        assert split.runner.kv_pool.k_buffers[0].shape[1] == 2  # rank 0 holds 2 of the 3 KV heads
        split.idle_integrity()
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in expected]
    assert got[3]["meta_info"]["cached_tokens"] > 60  # the radix cache served the story
    assert len(got[4]["text"]) == 8 and got[4]["text"][3] == "-"
    for a, b in zip(got, expected):
        for (lp_a, id_a, *_), (lp_b, id_b, *_) in zip(
            a["meta_info"]["output_token_logprobs"], b["meta_info"]["output_token_logprobs"]
        ):
            assert id_a == id_b and abs(lp_a - lp_b) < 1e-4


# A dummy model whose 2 KV heads split one per rank, for the triton backend in the interpreter.
_TINY = {
    "num_layers": 2,
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_heads": 6,
    "num_kv_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
}


# triton runs in its interpreter on CPU: the slowest of the three, outside the CI subset
@pytest.mark.parametrize("backend", ["torch", "cpu", pytest.param("triton", marks=pytest.mark.slow)])
def test_tp2_on_each_attention_backend(backend):
    tiny = dict(load_format="dummy", json_model_override_args=json.dumps(_TINY), attention_backend=backend)
    prompts = [list(range(10, 40)), list(range(10, 30)) + [3, 4]]
    params = {**GREEDY, "max_new_tokens": 5, "ignore_eos": True}
    with _engine(**tiny) as single:
        expected = single.generate(input_ids=prompts, sampling_params=params)
    with _engine(tp_size=2, **tiny) as split:
        got = split.generate(input_ids=prompts, sampling_params=params)
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in expected]


def test_idle_longer_than_the_timeout_then_a_rank_that_dies_fails_the_step_and_frees_everything():
    with _engine(tp_size=2, tp_timeout_s=5.0) as split:  # a step waits far less even on a loaded machine
        assert split.generate("Hello", GREEDY)["meta_info"]["completion_tokens"] == GREEDY["max_new_tokens"]
        time.sleep(6.0)  # the other rank waits for its next step longer than tp_timeout_s: still there
        assert split.generate("Hello", GREEDY)["meta_info"]["completion_tokens"] == GREEDY["max_new_tokens"]
        follower = split.runner.tp_driver.processes[0]
        follower.kill()
        follower.wait()
        for prompt in ("Hello again", "And again"):  # the group stays down: the second fails at once
            finish = split.generate(prompt, GREEDY)["meta_info"]["finish_reason"]
            assert finish["type"] == "abort" and "tensor-parallel group failed (rank 1" in finish["message"]
        split.idle_integrity()


def test_a_model_that_cannot_split_is_refused_before_any_rank_starts():
    with pytest.raises(ValueError, match="tp_size 4 does not fit the model's 3 KV heads"):
        _engine(tp_size=4)


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 5)), min_size=1, max_size=6), st.booleans())
def test_a_step_survives_the_wire(requests, grouped):
    """encode_forward / decode_forward: the batch and every sequence's slots arrive unchanged."""
    import torch

    from loomlm.runtime.distributed.batch_wire import decode_forward, encode_forward
    from loomlm.runtime.forward_context import ForwardBatch, ForwardMode, SharedPrefix
    from loomlm.runtime.memory_pool import ReqToTokenPool

    sent, received = ReqToTokenPool(8, 40, "cpu"), ReqToTokenPool(8, 40, "cpu")
    prefix = torch.tensor([p for p, _ in requests])
    extend = torch.tensor([e for _, e in requests])
    rows = torch.randperm(8)[: len(requests)]
    sent.req_to_token.copy_(torch.randint(0, 10_000, (8, 40), dtype=torch.int32))
    T = int(extend.sum())
    groups = (SharedPrefix(torch.arange(3), torch.tensor([0, len(requests) - 1])),) if grouped else ()
    batch = ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=torch.randint(0, 100, (T,)),
        positions=torch.arange(T),
        out_slots=torch.randint(0, 100, (T,)),
        req_rows=rows,
        prefix_lens=prefix,
        extend_lens=extend,
        logits_indices=torch.cumsum(extend, 0) - 1,
        shared_prefixes=groups,
    )
    got = decode_forward(encode_forward(batch, sent), received)
    for name in ("input_ids", "positions", "out_slots", "req_rows", "prefix_lens", "extend_lens", "logits_indices"):
        assert torch.equal(getattr(got, name), getattr(batch, name)), name
    assert got.mode is batch.mode and len(got.shared_prefixes) == len(groups)
    for g, h in zip(got.shared_prefixes, groups):
        assert torch.equal(g.slots, h.slots) and torch.equal(g.members, h.members)
    for row, n in zip(rows.tolist(), (prefix + extend).tolist()):
        assert torch.equal(received.req_to_token[row, :n], sent.req_to_token[row, :n])
