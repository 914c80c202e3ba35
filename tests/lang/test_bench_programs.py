"""`python -m loomlm.bench programs` on a tiny configuration: the three backends run the same programs
and do the same decoding work, the cache-on engine computes fewer prompt tokens than the cache-off one,
greedy outputs agree, and `--json` ends with the summary object. Counts only, no timings."""

from __future__ import annotations

import json

import pytest

from loomlm.bench.__main__ import main as bench_main
from loomlm.bench.naive_hf import _cut_at_stop, choice_token_starts
from loomlm.bench.program_workloads import FEW_SHOT_EXAMPLES, SHOTS, few_shot_workload, tree_of_thought_workload
from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.tracer import trace_program

# One select question, one tree (14 gens), 2 chats of 2 turns, 2 JSON records; 2-token free-text gens.
TINY = [
    "programs",
    "--questions",
    "1",
    "--few-shot-answer",
    "select",
    "--tot-problems",
    "1",
    "--conversations",
    "2",
    "--turns",
    "2",
    "--documents",
    "2",
    "--max-tokens",
    "2",
    "--json-max-tokens",
    "48",
    "--json",
]


def test_workload_inputs():
    few = few_shot_workload(3)
    assert len(few.arguments) == 3 and FEW_SHOT_EXAMPLES.count("\nAnswer: ") == len(SHOTS) == 5
    # The bound shots are the traced prefix (no roles in this program: any chat template does).
    assert trace_program(few.program.func, few.program.bind_arguments, ChatTemplate.plain()).prefix == FEW_SHOT_EXAMPLES
    assert all(a["question"].endswith("\nD. " + a["question"].split("\nD. ")[1]) for a in few.arguments)
    assert len(tree_of_thought_workload(2).arguments) == 2
    with pytest.raises(ValueError, match="--questions"):
        few_shot_workload(33)


def test_stop_cut_and_choice_starts():
    assert _cut_at_stop("abc<end>def<x>", ["<x>", "<end>"]) == ("abc", "<end>")
    assert _cut_at_stop("abc", ["<end>"]) == ("abc", None)
    # Choices start where prompt + choice tokenizes apart from the prompt, and never at 0.
    assert choice_token_starts([5, 6, 7], [[5, 6, 7, 8], [5, 6, 9], [1]]) == [3, 2, 1]


def _run(capsys, argv: list[str]) -> dict:
    assert bench_main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split()[0] == "workload"
    result = json.loads(out[-1])
    assert {"speedup_cache", "speedup_vs_naive", "workloads", "totals"} <= set(result)
    return result


def test_programs_tiny_run(capsys, engine):
    """Cache on against cache off (the CI subset; the transformers baseline is the slow test below)."""
    # `engine` (the session's) keeps the default model's weights loaded: the benchmark's engines share them.
    result = _run(capsys, [*TINY, "--skip-naive"])
    assert result["speedup_cache"] > 0
    _check_workloads(result["workloads"], ("cache on", "cache off"))


@pytest.mark.slow
def test_programs_tiny_run_with_the_transformers_baseline(capsys, engine):
    result = _run(capsys, TINY)
    assert result["speedup_cache"] > 0 and result["speedup_vs_naive"] > 0
    _check_workloads(result["workloads"], ("cache on", "cache off", "naive"))


def _check_workloads(work: dict, kinds: tuple[str, ...]) -> None:
    assert set(work) == {"few-shot", "tot", "chat", "json"}
    # Same programs, same gens on every backend; free-text gens make exactly --max-tokens tokens.
    expected = {"tot": (14, 14 * 2), "chat": (4, 4 * 2)}
    for kind in kinds:
        for key, (gens, tokens) in expected.items():
            assert (work[key][kind]["gens"], work[key][kind]["output_tokens"]) == (gens, tokens), (key, kind)
        assert (work["few-shot"][kind]["selects"], work["few-shot"][kind]["gens"]) == (1, 0), kind
    assert all(work["json"][kind]["gens"] == 2 and work["json"][kind]["valid_records"] == 2 for kind in kinds)
    for key in work:
        on, off = work[key]["cache on"], work[key]["cache off"]
        assert off["prefill_cached"] == 0 and on["prefill_cached"] > 0, key
        assert on["prefill_computed"] < off["prefill_computed"], key
    # One fork commit per fork: 1 at the root, 2 after the plans, 4 after the solutions; run_batch
    # prefills the traced prefix (the chat's system prompt) once per batch of more than one program.
    assert work["tot"]["cache on"]["prefill_calls"] == 7
    assert work["chat"]["cache on"]["prefill_calls"] == 1
    # The select scores its 4 choices after the cached prompt: cache on computes the prompt once, cache off
    # once per choice.
    assert work["few-shot"]["cache off"]["prefill_computed"] > 3 * work["few-shot"]["cache on"]["prefill_computed"]
    # float32, greedy: the cache does not change what is generated, and transformers (the same weights,
    # the same guide for the JSON record) generates the same text.
    others = [k for k in kinds if k != "cache on"]
    for key, programs in (("few-shot", 1), ("tot", 1), ("chat", 2), ("json", 2)):
        assert work[key]["identical_outputs_vs_cache_on"] == dict.fromkeys(others, programs), key
    if "naive" in kinds:
        assert work["few-shot"]["cache on"]["accuracy"] == work["few-shot"]["naive"]["accuracy"]


def test_programs_rejects_unknown_workload(capsys):
    assert bench_main(["programs", "--workloads", "few-shot,poetry"]) == 2
    assert "poetry" in capsys.readouterr().err
