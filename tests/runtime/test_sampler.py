"""Sampler: each parameter changes the outcome as specified; seeded draws are batch-independent."""

from __future__ import annotations

import pytest
import torch

from loomlm.runtime.logprobs import compute_logprobs
from loomlm.runtime.sampler import Sampler
from loomlm.runtime.sampling_params import SamplingParams as P

EOS = 3


def make(vocab: int = 8, rows: int = 8) -> Sampler:
    return Sampler(vocab, rows, "cpu")


def draw(s: Sampler, row: int, logits: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """n draws for one request at positions start..start+n-1 (one batch of n copies of the row)."""
    rows = torch.full((n,), row, dtype=torch.int64)
    return s.sample(logits.expand(n, -1).contiguous(), rows, torch.arange(start, start + n))


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


def assert_matches(tokens: torch.Tensor, probs: torch.Tensor) -> None:
    """Chi-square goodness of fit; draws are seeded, so the bound (p ~ 1e-6) never flakes."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    assert torch.all(counts[expected == 0] == 0), f"drew a token of probability 0: {counts}"
    support = expected > 0
    chi2 = float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())
    dof = int(support.sum()) - 1
    assert chi2 < 10 + 4 * dof, f"chi2={chi2:.1f} dof={dof} counts={counts.tolist()} expected={expected.tolist()}"


LOGITS = torch.log(torch.tensor([0.35, 0.25, 0.15, 0.10, 0.07, 0.05, 0.02, 0.01]))


# ---------------------------------------------------------------- distribution of plain sampling
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_frequencies_match_softmax(seed):
    s = make()
    s.begin_request(0, P(), [], seed=seed, stop_token_ids=set())
    assert_matches(draw(s, 0, LOGITS, 20000), LOGITS.softmax(-1))


def test_frequencies_across_seeds_at_one_position():
    s = make(rows=64)
    for row in range(64):
        s.begin_request(row, P(), [], seed=1000 + row, stop_token_ids=set())
    rows = torch.arange(64).repeat(100)
    # Same position for every request of a row group, different positions across groups.
    steps = torch.arange(100).repeat_interleave(64)
    tokens = s.sample(LOGITS.expand(6400, -1).contiguous(), rows, steps)
    assert_matches(tokens, LOGITS.softmax(-1))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_logits(temperature):
    s = make()
    s.begin_request(0, P(temperature=temperature), [], seed=7, stop_token_ids=set())
    tokens = draw(s, 0, LOGITS, 20000)
    assert_matches(tokens, (LOGITS / temperature).softmax(-1))


def test_temperature_zero_is_argmax_and_positive_is_not():
    s = make()
    s.begin_request(0, P(temperature=0.0), [], seed=1, stop_token_ids=set())
    s.begin_request(1, P(temperature=1.0), [], seed=1, stop_token_ids=set())
    assert torch.all(draw(s, 0, LOGITS, 500) == 0)
    assert len(set(draw(s, 1, LOGITS, 500).tolist())) > 3


def test_greedy_takes_argmax_per_row():
    s = make(vocab=50)
    s.begin_request(2, P(temperature=0), [], seed=0, stop_token_ids=set())
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    tokens = s.sample(logits, torch.full((6,), 2), torch.zeros(6, dtype=torch.int64))
    assert torch.equal(tokens, logits.argmax(-1))


# ---------------------------------------------------------------- filters
def test_top_k_one_equals_greedy():
    s = make()
    s.begin_request(0, P(top_k=1, temperature=5.0), [], seed=3, stop_token_ids=set())
    assert torch.all(draw(s, 0, LOGITS, 2000) == 0)


@pytest.mark.parametrize("with_top_p", [False, True])  # the top-k-only path and the top-p path
def test_top_k_keeps_k_best_renormalised(with_top_p):
    s = make()
    params = P(top_k=3, top_p=0.999) if with_top_p else P(top_k=3)
    s.begin_request(0, params, [], seed=4, stop_token_ids=set())
    probs = LOGITS.softmax(-1).clone()
    probs[3:] = 0
    assert_matches(draw(s, 0, LOGITS, 20000), probs / probs.sum())


def test_top_k_differs_per_row_in_one_batch():
    s = make()
    for row, k in enumerate([2, 5, -1]):
        s.begin_request(row, P(top_k=k), [], seed=row, stop_token_ids=set())
    n = 3000
    rows = torch.arange(3).repeat(n)
    tokens = s.sample(LOGITS.expand(3 * n, -1).contiguous(), rows, torch.arange(n).repeat_interleave(3))
    assert [set(tokens[rows == r].tolist()) for r in range(3)] == [{0, 1}, {0, 1, 2, 3, 4}, set(range(8))]


def test_top_p_tiny_equals_greedy():
    s = make()
    s.begin_request(0, P(top_p=1e-6), [], seed=5, stop_token_ids=set())
    assert torch.all(draw(s, 0, LOGITS, 2000) == 0)


def test_top_p_keeps_smallest_set_reaching_p():
    s = make()
    # Mass before each sorted token: 0, .35, .60, .75 -> with p = 0.7 tokens 0, 1, 2 survive.
    s.begin_request(0, P(top_p=0.7), [], seed=6, stop_token_ids=set())
    probs = LOGITS.softmax(-1).clone()
    probs[3:] = 0
    assert_matches(draw(s, 0, LOGITS, 20000), probs / probs.sum())


def reference_filter(logits: torch.Tensor, k: int, p: float) -> set[int]:
    """Tokens kept by top-k then top-p, one row, by the textbook full sort in float64."""
    order = logits.double().argsort(descending=True).tolist()
    kept = order[:k] if k > 0 else order
    probs = logits.double()[kept].softmax(-1)
    mass, out = 0.0, set()
    for token, prob in zip(kept, probs.tolist()):
        if mass >= p and p < 1.0:
            break
        out.add(token)
        mass += prob
    return out


def test_top_k_top_p_filter_matches_full_sort_reference():
    V = 3000  # more than the candidates looked at first, so flat rows take the full-sort fallback
    gen = torch.Generator().manual_seed(0)
    scales = [0.1, 0.5, 3.0, 8.0, 0.1, 2.0, 0.05, 1.0]  # flat rows need > 1024 tokens for p
    settings = [(-1, 0.9), (-1, 0.5), (-1, 0.95), (-1, 0.3), (50, 0.99), (1500, 0.9), (-1, 1.0), (7, 1.0)]
    s = Sampler(V, 8, "cpu")
    for row, (k, p) in enumerate(settings):
        s.begin_request(row, P(top_k=k, top_p=p), [], seed=0, stop_token_ids=set())
    logits = torch.stack([torch.randn(V, generator=gen) * c for c in scales])
    filtered = s._top_k_top_p(logits, torch.arange(8))
    for row, (k, p) in enumerate(settings):
        kept = set(torch.isfinite(filtered[row]).nonzero().squeeze(1).tolist())
        assert kept == reference_filter(logits[row], k, p), f"row {row}"
        assert torch.equal(filtered[row][list(kept)], logits[row][list(kept)])
    assert len(reference_filter(logits[0], -1, 0.9)) > 1024  # the fallback really ran


def test_top_k_and_top_p_combine():
    s = make()
    s.begin_request(0, P(top_k=2, top_p=0.7), [], seed=6, stop_token_ids=set())
    assert set(draw(s, 0, LOGITS, 3000).tolist()) == {0, 1}


def test_min_p_drops_tokens_below_fraction_of_best():
    s = make()
    # 0.35 * 0.25 = 0.0875: tokens with p >= 0.0875 (0..3) survive.
    s.begin_request(0, P(min_p=0.25), [], seed=8, stop_token_ids=set())
    probs = LOGITS.softmax(-1).clone()
    probs[4:] = 0
    assert_matches(draw(s, 0, LOGITS, 20000), probs / probs.sum())


def test_min_p_one_equals_greedy():
    s = make()
    s.begin_request(0, P(min_p=1.0, temperature=3.0), [], seed=9, stop_token_ids=set())
    assert torch.all(draw(s, 0, LOGITS, 1000) == 0)


# ---------------------------------------------------------------- penalties (greedy, crafted logits)
def greedy_token(s: Sampler, row: int, logits: list[float], generated: int = 0) -> int:
    return int(s.sample(torch.tensor([logits]), torch.tensor([row]), torch.tensor([generated]))[0])


def test_repetition_penalty_divides_positive_logits_of_prompt_tokens():
    s = make(vocab=4)
    s.begin_request(0, P(temperature=0, repetition_penalty=1.5), [0, 0, 2], seed=0, stop_token_ids=set())
    s.begin_request(1, P(temperature=0), [0], seed=0, stop_token_ids=set())
    assert greedy_token(s, 0, [2.0, 1.9, -1.0, -1.1]) == 1  # 2.0 / 1.5 < 1.9
    assert greedy_token(s, 1, [2.0, 1.9, -1.0, -1.1]) == 0  # no penalty on that row


def test_repetition_penalty_multiplies_negative_logits_and_covers_output():
    s = make(vocab=4)
    s.begin_request(0, P(temperature=0, repetition_penalty=1.5), [3], seed=0, stop_token_ids=set())
    assert greedy_token(s, 0, [-5.0, -5.0, -1.2, -1.0]) == 2  # -1.0 * 1.5 < -1.2
    s.record(torch.tensor([0]), torch.tensor([2]))  # token 2 generated: now penalised too
    assert greedy_token(s, 0, [-5.0, -5.0, -1.2, -1.0]) == 3  # 2: -1.2 * 1.5 = -1.8 < 3: -1.5


def test_repetition_penalty_below_one_encourages_repeats():
    s = make(vocab=3)
    s.begin_request(0, P(temperature=0, repetition_penalty=0.5), [2], seed=0, stop_token_ids=set())
    assert greedy_token(s, 0, [1.5, 0.0, 1.0]) == 2  # 1.0 / 0.5 = 2.0


def test_frequency_penalty_scales_with_count():
    s = make(vocab=2)
    s.begin_request(0, P(temperature=0, frequency_penalty=0.3), [0, 0, 0], seed=0, stop_token_ids=set())
    assert greedy_token(s, 0, [1.0, 0.5]) == 0  # prompt tokens are not counted
    s.record(torch.tensor([0]), torch.tensor([0]))
    assert greedy_token(s, 0, [1.0, 0.5]) == 0  # 0.7 > 0.5
    s.record(torch.tensor([0]), torch.tensor([0]))
    assert greedy_token(s, 0, [1.0, 0.5]) == 1  # 0.4 < 0.5


def test_presence_penalty_is_flat():
    s = make(vocab=2)
    s.begin_request(0, P(temperature=0, presence_penalty=0.6), [], seed=0, stop_token_ids=set())
    s.record(torch.tensor([0]), torch.tensor([0]))
    assert greedy_token(s, 0, [1.0, 0.5]) == 1  # 0.4 < 0.5
    s.begin_request(1, P(temperature=0, presence_penalty=0.4), [], seed=0, stop_token_ids=set())
    s.record(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]))  # duplicates accumulate in one call
    assert greedy_token(s, 1, [1.0, 0.5]) == 0  # 0.6 > 0.5 whatever the count


def test_negative_penalties_encourage():
    s = make(vocab=2)
    s.begin_request(0, P(temperature=0, frequency_penalty=-1.0), [], seed=0, stop_token_ids=set())
    s.record(torch.tensor([0]), torch.tensor([1]))
    assert greedy_token(s, 0, [1.0, 0.5]) == 1


def test_row_reuse_resets_counts():
    s = make(vocab=2)
    s.begin_request(0, P(temperature=0, presence_penalty=1.0), [], seed=0, stop_token_ids=set())
    s.record(torch.tensor([0]), torch.tensor([0]))
    assert greedy_token(s, 0, [1.0, 0.5]) == 1
    s.end_request(0)
    s.begin_request(0, P(temperature=0, presence_penalty=1.0), [], seed=0, stop_token_ids=set())
    assert greedy_token(s, 0, [1.0, 0.5]) == 0


def test_resumed_request_recounts_its_output():
    s = make(vocab=2)
    s.begin_request(0, P(temperature=0, frequency_penalty=0.3), [], seed=0, stop_token_ids=set(), output_ids=[0, 0])
    assert greedy_token(s, 0, [1.0, 0.5]) == 1  # 1.0 - 2 * 0.3 < 0.5


# ---------------------------------------------------------------- min_new_tokens
def test_min_new_tokens_blocks_eos_and_stop_ids_until_reached():
    s = make()
    s.begin_request(0, P(temperature=0, min_new_tokens=2), [], seed=0, stop_token_ids={EOS, 5})
    s.begin_request(1, P(temperature=0), [], seed=0, stop_token_ids={EOS})
    logits = torch.zeros(2, 8)
    logits[:, EOS] = 10.0
    logits[:, 5] = 9.0
    logits[:, 1] = 1.0
    rows = torch.tensor([0, 1])
    assert s.sample(logits, rows, torch.tensor([0, 0])).tolist() == [1, EOS]
    assert s.sample(logits, rows, torch.tensor([1, 1])).tolist() == [1, EOS]
    assert s.sample(logits, rows, torch.tensor([2, 2])).tolist() == [EOS, EOS]


def test_min_new_tokens_blocking_when_sampling():
    s = make(rows=100)
    for row in range(100):
        s.begin_request(row, P(min_new_tokens=5), [], seed=row, stop_token_ids={0})
    rows = torch.arange(100).repeat(10)
    positions = torch.arange(10).repeat_interleave(100)
    tokens = s.sample(LOGITS.expand(1000, -1).contiguous(), rows, positions)
    early, late = tokens[positions < 5], tokens[positions >= 5]
    assert 0 not in early.tolist()  # p(0) = 0.35 unblocked: 500 draws would hit it
    assert (late == 0).sum() > 100
    blocked = LOGITS.softmax(-1).clone()
    blocked[0] = 0
    assert_matches(early, blocked / blocked.sum())


# ---------------------------------------------------------------- seeds and batch independence
def run_steps(s: Sampler, rows: list[int], logits_per_step: list[torch.Tensor]) -> list[list[int]]:
    """Decode loop: logits_per_step[i] is [len(rows), V]; returns the tokens of every step."""
    out = []
    r = torch.tensor(rows)
    for step, logits in enumerate(logits_per_step):
        tokens = s.sample(logits, r, torch.full((len(rows),), step))
        s.record(r, tokens)
        out.append(tokens.tolist())
    return out


def test_same_seed_same_tokens_regardless_of_batch():
    V = 64
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(5, V, generator=gen) for _ in range(12)]  # per step: target, then 4 others
    target = P(temperature=0.9, top_p=0.95, frequency_penalty=0.2)
    others = [
        P(temperature=0),
        P(top_k=5, repetition_penalty=1.3),
        P(min_p=0.1, presence_penalty=0.5),
        P(temperature=1.5, min_new_tokens=3),
    ]

    alone = Sampler(V, 8, "cpu")
    alone.begin_request(3, target, [1, 2], seed=42, stop_token_ids={0})
    solo = [t[0] for t in run_steps(alone, [3], [x[[0]] for x in steps])]

    crowd = Sampler(V, 8, "cpu")
    for row, params in zip([0, 1, 5, 7], others):
        crowd.begin_request(row, params, [4, 5, 6], seed=row, stop_token_ids={0})
    crowd.begin_request(2, target, [1, 2], seed=42, stop_token_ids={0})
    # The target sits on row 2, third in a batch of 5, with different neighbours' features active.
    batched = run_steps(crowd, [0, 1, 2, 5, 7], [x[[1, 2, 0, 3, 4]] for x in steps])
    assert [t[2] for t in batched] == solo
    assert len(set(solo)) > 3  # really sampling


def test_different_seeds_differ_and_same_seed_repeats():
    a, b = make(vocab=256), make(vocab=256)
    logits = torch.zeros(256)
    a.begin_request(0, P(), [], seed=1, stop_token_ids=set())
    a.begin_request(1, P(), [], seed=2, stop_token_ids=set())
    b.begin_request(6, P(), [], seed=1, stop_token_ids=set())
    assert torch.equal(draw(a, 0, logits, 50), draw(b, 6, logits, 50))
    assert not torch.equal(draw(a, 0, logits, 50), draw(a, 1, logits, 50))
    assert not torch.equal(draw(a, 0, logits, 50), draw(a, 0, logits, 50, start=50))


# ---------------------------------------------------------------- bookkeeping and gating
def test_features_cost_nothing_when_unused(monkeypatch):
    def forbidden(*_args, **_kw):
        raise AssertionError("feature path ran although no active row uses it")

    s = make()
    monkeypatch.setattr(Sampler, "_top_k_top_p", forbidden)
    monkeypatch.setattr(Sampler, "_top_k", forbidden)
    monkeypatch.setattr(Sampler, "_exponentials", forbidden)
    s.begin_request(0, P(temperature=0), [1], seed=0, stop_token_ids={EOS})
    s.begin_request(1, P(top_k=1, min_new_tokens=0), [1], seed=0, stop_token_ids={EOS})
    s.sample(torch.randn(2, 8), torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert s._output_counts is None and s._prompt_mask is None and s._stop_mask is None
    s.begin_request(2, P(top_p=0.5), [1], seed=0, stop_token_ids={EOS})
    with pytest.raises(AssertionError):
        s.sample(torch.randn(1, 8), torch.tensor([2]), torch.tensor([0]))
    s.end_request(2)
    s.sample(torch.randn(1, 8), torch.tensor([0]), torch.tensor([0]))


def test_input_logits_untouched_with_every_feature_on():
    s = make()
    s.begin_request(
        0,
        P(
            top_k=3,
            top_p=0.8,
            min_p=0.1,
            repetition_penalty=1.2,
            frequency_penalty=0.5,
            presence_penalty=0.5,
            min_new_tokens=4,
        ),
        [1, 2],
        seed=0,
        stop_token_ids={EOS},
    )
    s.record(torch.tensor([0]), torch.tensor([4]))
    logits = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    before = logits.clone()
    s.sample(logits, torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert torch.equal(logits, before)


def test_row_errors():
    s = make(rows=2)
    s.begin_request(0, P(), [], seed=0, stop_token_ids=set())
    with pytest.raises(ValueError, match="already in use"):
        s.begin_request(0, P(), [], seed=0, stop_token_ids=set())
    with pytest.raises(ValueError, match="row"):
        s.begin_request(2, P(), [], seed=0, stop_token_ids=set())
    with pytest.raises(ValueError, match="not in use"):
        s.end_request(1)
    assert s.num_active() == 1
    s.end_request(0)
    assert s.num_active() == 0


def test_accepts_tensor_prompt_and_oversized_top_k():
    s = make()
    s.begin_request(0, P(top_k=1000, repetition_penalty=2.0), torch.tensor([1, 2]), seed=0, stop_token_ids={EOS, 99})
    penalised = LOGITS.clone()
    penalised[[1, 2]] *= 2.0  # negative logits of prompt tokens are multiplied; top_k >= V: no filter
    assert_matches(draw(s, 0, LOGITS, 20000), penalised.softmax(-1))


# ---------------------------------------------------------------- logprobs
def test_compute_logprobs():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([4, 0, 9])
    token_lp, top_values, top_ids = compute_logprobs(logits, tokens, top_k=3)
    reference = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(token_lp.double(), reference[torch.arange(3), tokens], atol=1e-6)
    assert top_values.shape == top_ids.shape == (3, 3)
    assert torch.equal(top_ids, reference.topk(3, -1).indices)
    assert torch.all(top_values[:, :-1] >= top_values[:, 1:])
    _, v0, i0 = compute_logprobs(logits, tokens, top_k=0)
    assert v0.shape == (3, 0) and i0.shape == (3, 0) and i0.dtype == torch.int64


def test_masked_out_tokens_are_never_drawn() -> None:
    """Grammar masks leave a few finite logits per row; no draw may land on a -inf one. (A uniform of
    exactly 1.0 once made an Exp(1) variate 0, and 0 / 0 = NaN won the argmax about once per 300 rows.)"""
    V, R = 49152, 256
    s = Sampler(V, R, "cpu")
    for row in range(R):
        s.begin_request(row, P(temperature=1.0, seed=row), [1], row, set())
    allowed = torch.randint(0, V, (R, 3))
    logits = torch.full((R, V), float("-inf"))
    logits.scatter_(1, allowed, torch.randn(R, 3))
    rows = torch.arange(R)
    for step in range(8):
        tokens = s.sample(logits, rows, torch.full((R,), step))
        assert (allowed == tokens[:, None]).any(dim=1).all()


# ---------------------------------------------------------------- a row's life through prepare()
def _extend_batch(reqs: list, released: tuple[int, ...] = ()):
    from loomlm.runtime.batch import ExtendItem, build_extend

    table = torch.zeros(8, 16, dtype=torch.int32)
    batch = build_extend([ExtendItem(r, 0, len(r.prompt_ids)) for r in reqs], table)
    batch.released_rows = released
    return batch


def _req(rid: str, row: int, params: P):
    from loomlm.runtime.request import LogprobOptions, Req

    return Req(
        rid=rid,
        prompt_ids=[1, 2],
        params=params,
        seed=0,
        logprobs=LogprobOptions(),
        sink=print,
        max_new_tokens=4,
        detokenizer=None,
        row=row,
        scored_upto=2,
    )  # no prompt logprobs


def test_prepare_ends_released_rows_before_claiming_them_again():
    s = make()
    first = _req("a", 0, P(repetition_penalty=1.5))
    s.prepare(_extend_batch([first]))
    assert s.in_use(0) and s._num_using["repetition"] == 1
    s.check_rows([0], [])
    # Row 0 is freed (the request finished) and given to a greedy request in the same batch.
    second = _req("b", 0, P(temperature=0))
    s.prepare(_extend_batch([second], released=(0,)))
    assert s.in_use(0) and s._num_using["repetition"] == 0 and s._num_using["sample"] == 0
    s.check_rows([0], [])
    with pytest.raises(AssertionError):
        s.check_rows([], [])  # a claimed row nobody holds and nobody released
    tokens = s.sample_batch(_extend_batch([second]), torch.stack([LOGITS]))
    assert tokens.tokens.tolist() == [0] and tokens.reqs == [second]
