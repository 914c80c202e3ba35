"""The engine loop without a model: the real `EngineCore.step` over random workloads on tiny pools, every
policy, chunking on and off, random sampling parameters, random aborts.

`FakeRunner` stands in for the ModelRunner: a token's "K/V" is the token id itself, written to the slot
the batch gives it, and the logits of a position put all the mass on `next_token` of the tokens read back
through the request's `req_to_token` row. So outputs are right only if every slot mapping is (cached
prefixes, chunks, recompute after retraction), and retraction and recompute must reproduce exactly the
sequence a huge pool produces. Integrity (slots, rows, sampler rows) is checked after every step, and at
the end every slot is back (after a flush)."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.detokenizer import IncrementalDetokenizer
from loomlm.runtime.engine_core import EngineCore
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.request import LogprobOptions, Req, ReqOutput, ReqStatus
from loomlm.runtime.sampling_params import SamplingParams

VOCAB = 5  # a tiny alphabet, so that prompts and outputs share prefixes and the cache is busy
LETTERS = "abcde"
CONTEXT = 256
# Every feature of the sampler; with all the mass on one token each of them still picks it.
PARAMS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.7, top_k=3),
    SamplingParams(top_p=0.9, repetition_penalty=1.3),
    SamplingParams(frequency_penalty=0.5, presence_penalty=0.2, min_p=0.1),
]


def next_token(tokens: list[int]) -> int:
    return (sum(tokens[-3:]) * 7 + len(tokens)) % VOCAB


class StubTokenizer:
    """One letter per token id: enough for the real IncrementalDetokenizer."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(LETTERS[i] for i in ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [LETTERS.index(c) for c in text]


class FakeRunner:
    """What EngineCore needs of a ModelRunner, with next_token() standing in for the model."""

    vocab_size = VOCAB
    device = torch.device("cpu")
    cuda_graph_replays = 0

    def __init__(self, slots: int, rows: int, next_fn: Callable[[list[int]], int] = next_token):
        self.next_fn = next_fn
        self.kv_pool = KVPool(slots, num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32, device="cpu")
        self.req_pool = ReqToTokenPool(rows, CONTEXT, "cpu")
        self.context_length = CONTEXT
        self.failing: set[int] = set()  # forward calls (0-based) that raise
        self.calls = 0

    def forward(self, batch: ScheduledBatch) -> torch.Tensor:
        assert len(batch.reqs) > 0
        self.calls += 1
        if self.calls - 1 in self.failing:
            raise RuntimeError("injected forward fault")
        keys = self.kv_pool.k_buffers[0][:, 0, 0]  # [slots + 1]
        keys[batch.out_slots] = batch.input_ids.float()
        lens = batch.extend_lens.tolist()
        starts = [sum(lens[:b]) for b in range(len(lens))]  # first flattened token of each request
        logits = torch.full((len(batch.logits_indices), VOCAB), float("-inf"))
        for j, t in enumerate(batch.logits_indices.tolist()):
            b = bisect.bisect_right(starts, t) - 1
            pos = int(batch.prefix_lens[b]) + t - starts[b]
            slots = self.req_pool.req_to_token[int(batch.req_rows[b]), : pos + 1].to(torch.int64)
            logits[j, self.next_fn(keys[slots].to(torch.int64).tolist())] = 0.0
        return logits


def make_core(
    slots: int, rows: int, policy: str, cache: bool, chunk: int | None, mixed: bool = False, mixed_tokens: int = 512
) -> EngineCore:
    config = EngineConfig(
        max_running_requests=rows,
        max_prefill_tokens=chunk or 10_000,
        chunked_prefill_size=chunk or -1,
        schedule_policy=policy,
        disable_radix_cache=not cache,
        enable_mixed_chunk=mixed,
        mixed_prefill_tokens=mixed_tokens,
    )
    return EngineCore(FakeRunner(slots, rows), StubTokenizer(), config, start_loop=False)


def run(core: EngineCore, reqs: list[Req], aborts: dict[int, int]) -> int:
    """Runs to completion; `aborts` maps a step number to the index of the request aborted then."""
    core.submit(*reqs)
    steps = 0
    while True:
        if steps in aborts:
            core.abort(reqs[aborts[steps]].rid)  # a no-op once the request finished
        core.drain_inbox()
        if not core.scheduler.has_work():
            break
        assert core.step(), "work left that cannot be scheduled"
        core.check_integrity_on_loop()
        steps += 1
        assert steps < 5000, "no progress"
    return steps


def make_reqs(rng: random.Random, n: int) -> tuple[list[Req], list[list[ReqOutput]]]:
    reqs, outputs = [], []
    for i in range(n):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 40))]
        outputs.append([])
        reqs.append(
            Req(
                rid=f"r{i}",
                prompt_ids=prompt,
                params=rng.choice(PARAMS),
                seed=i,
                logprobs=LogprobOptions(),
                sink=outputs[-1].append,
                max_new_tokens=rng.randrange(1, 25),
                detokenizer=IncrementalDetokenizer(StubTokenizer()),
            )
        )
    return reqs, outputs


def expected_output(req: Req) -> list[int]:
    tokens = list(req.prompt_ids)
    for _ in range(req.max_new_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(req.prompt_ids) :]


def check_delivered(req: Req, outs: list[ReqOutput]) -> None:
    """The sink got every token once, the text of all but a final stop token, and one final increment,
    last."""
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True], req.rid
    assert sum((o.new_token_ids for o in outs), []) == req.output_ids
    shown = req.output_ids[:-1] if req.finish_reason.type == "stop" else req.output_ids
    assert "".join(o.text_delta for o in outs) == "".join(LETTERS[t] for t in shown)
    assert outs[-1].meta_info["completion_tokens"] == len(req.output_ids)


def check_all_back(core: EngineCore) -> None:
    mem = core.scheduler.memory_snapshot()
    assert mem["kv_pool_used"] == mem["cache_size"] and mem["cache_protected"] == 0
    assert core.scheduler.flush_cache() and core.runner.kv_pool.used() == 0


@given(
    seed=st.integers(0, 10_000),
    policy=st.sampled_from(["fcfs", "lpm", "dfs-weight"]),
    cache=st.booleans(),
    chunk=st.sampled_from([None, 8, 17]),
    slots=st.integers(62, 200),
    rows=st.integers(1, 6),
    n=st.integers(1, 14),
    num_aborts=st.integers(0, 3),
    mixed=st.booleans(),
    mixed_tokens=st.sampled_from([3, 512]),  # 3: every step that carries decodes prefills 3 tokens at most
)
@settings(max_examples=300, deadline=None)
def test_random_workloads_complete_identically_and_leak_nothing(
    seed, policy, cache, chunk, slots, rows, n, num_aborts, mixed, mixed_tokens
):
    rng = random.Random(seed)
    reqs, outputs = make_reqs(rng, n)
    aborts = {rng.randrange(0, 60): rng.randrange(n) for _ in range(num_aborts)}
    core = make_core(slots, rows, policy, cache, chunk, mixed, mixed_tokens)
    run(core, reqs, aborts)
    for req, outs in zip(reqs, outputs):
        assert req.status == ReqStatus.FINISHED
        if req.finish_reason.type == "abort":
            assert req.finish_reason.message == "aborted by the caller"  # never an engine error
            assert req.output_ids == expected_output(req)[: len(req.output_ids)]
        else:
            assert req.finish_reason.type == "length"
            assert req.output_ids == expected_output(req), req.rid
        check_delivered(req, outs)
    check_all_back(core)


@given(
    seed=st.integers(0, 10_000),
    cache=st.booleans(),
    chunk=st.sampled_from([None, 8]),
    slots=st.integers(62, 150),
    rows=st.integers(1, 4),
    n=st.integers(1, 8),
    forward_faults=st.sets(st.integers(0, 40), max_size=3),
    schedule_faults=st.sets(st.integers(0, 40), max_size=2),
)
@settings(max_examples=100, deadline=None)
def test_failed_steps_abort_their_requests_and_leak_nothing(
    seed, cache, chunk, slots, rows, n, forward_faults, schedule_faults
):
    """A failing forward aborts its batch's requests, a failing scheduler every holder; the rest goes on."""
    rng = random.Random(seed)
    reqs, outputs = make_reqs(rng, n)
    core = make_core(slots, rows, "lpm", cache, chunk)
    core.runner.failing = forward_faults
    schedule, calls = core.scheduler.schedule, [0]

    def faulty_schedule():
        calls[0] += 1
        if calls[0] - 1 in schedule_faults:
            raise RuntimeError("injected scheduler fault")
        return schedule()

    core.scheduler.schedule = faulty_schedule
    run(core, reqs, {})
    for req, outs in zip(reqs, outputs):
        if req.finish_reason.type == "abort":
            assert "injected" in req.finish_reason.message
            assert req.output_ids == expected_output(req)[: len(req.output_ids)]
        else:
            assert req.output_ids == expected_output(req), req.rid
        check_delivered(req, outs)
    check_all_back(core)


def test_finished_rows_leave_the_sampler_at_the_next_prepare():
    core = make_core(100, 2, "lpm", True, None)
    reqs, _ = make_reqs(random.Random(1), 4)
    for req in reqs:
        req.params = PARAMS[2]  # penalties: the rows claim the [R, V] tables
    run(core, reqs, {})
    assert core.sampler.num_active() == len(core.scheduler.pending_released_rows) > 0
    extra, _ = make_reqs(random.Random(2), 1)
    run(core, extra, {})
    # The next batch ended the old rows before claiming one; only the last request's row is pending now.
    assert core.sampler.num_active() == len(core.scheduler.pending_released_rows) == 1
    check_all_back(core)


def test_tiny_pool_forces_retraction_and_eviction():
    rng = random.Random(7)
    reqs, outputs = make_reqs(rng, 12)
    for req in reqs:
        req.max_new_tokens = 24
    core = make_core(90, 8, "lpm", True, 16)
    run(core, reqs, {})
    assert core.stats.retracted_requests > 0 and core.scheduler.cache.tree.evicted_tokens > 0
    assert all(r.output_ids == expected_output(r) for r in reqs)
    for req, outs in zip(reqs, outputs):
        check_delivered(req, outs)


def test_low_priority_requests_are_retracted_first():
    rng = random.Random(3)
    reqs, _ = make_reqs(rng, 10)
    for i, req in enumerate(reqs):
        req.max_new_tokens = 24
        req.priority = 1 if i % 2 else 0
    core = make_core(100, 10, "fcfs", True, None)
    sched = core.scheduler
    victims: list[tuple[int, int]] = []  # (victim's priority, lowest priority among the holders then)
    retract = sched.retract

    def logged(req):
        victims.append((req.priority, min(r.priority for r in sched.holders())))
        retract(req)

    sched.retract = logged
    run(core, reqs, {})
    assert victims and all(victim == lowest for victim, lowest in victims)
    assert any(victim == 0 for victim, _ in victims)
    assert all(r.output_ids == expected_output(r) for r in reqs)


def _decode_stall(mixed: bool, mixed_tokens: int = 512) -> tuple[int, int]:
    """A request decoding while a 96-token prompt is prefilled in 8-token chunks: (steps of that
    prefill in which the decoding request got no token, mixed passes)."""
    core = make_core(400, 4, "fcfs", True, 8, mixed, mixed_tokens)
    rng = random.Random(3)
    (a, b), _ = make_reqs(rng, 2)
    a.max_new_tokens, b.prompt_ids, b.max_new_tokens = 60, [rng.randrange(VOCAB) for _ in range(96)], 2
    core.submit(a)
    while not a.output_ids:
        core.drain_inbox()
        core.step()
    core.submit(b)
    core.drain_inbox()
    stalled = 0
    while not b.output_ids:  # until b's prefill is done
        before = len(a.output_ids)
        core.step()
        core.check_integrity_on_loop()
        stalled += len(a.output_ids) == before
    run(core, [], {})
    assert a.output_ids == expected_output(a) and b.output_ids == expected_output(b)
    check_all_back(core)
    return stalled, core.stats.mixed_passes


def test_mixed_chunks_keep_decoding_during_a_long_prefill():
    stalled, mixed_passes = _decode_stall(mixed=False)
    assert stalled >= 12 and mixed_passes == 0  # 12 chunks: the decode waits through each
    stalled, mixed_passes = _decode_stall(mixed=True)
    assert stalled == 0 and mixed_passes == 12  # every chunk carries the decode token
    stalled, mixed_passes = _decode_stall(mixed=True, mixed_tokens=4)
    assert stalled == 0 and mixed_passes == 24  # while a decode runs, a step prefills 4 tokens
