"""`python -m loomlm.bench speculative` on tiny settings: the rows' structure, the counters adding up, and
greedy outputs identical with speculation off and on (no timings asserted)."""

from __future__ import annotations

import json

import pytest

from loomlm.bench.__main__ import main as bench_main
from loomlm.bench.speculative import Run, first_mismatch, summarize


def test_first_mismatch_names_the_prompt_and_token():
    assert first_mismatch([[1, 2], [3, 4]], [[1, 2], [3, 4]]) is None
    assert first_mismatch([[1, 2], [3, 4, 5]], [[1, 2], [3, 9, 5]]) == {
        "prompt": 1,
        "token": 1,
        "off_len": 3,
        "on_len": 3,
    }
    assert first_mismatch([[1, 2, 3]], [[1, 2]])["token"] == 2  # one output is a prefix of the other


def test_summary_counts_accepted_tokens_per_verify_pass():
    counters = {"forward_passes": 5, "spec_verify_passes": 3, "spec_verify_requests": 3}
    counters |= {"spec_draft_tokens": 8, "spec_accepted_tokens": 6}
    off = Run(2.0, [[1] * 10], {"forward_passes": 10})
    on = Run(1.0, [[1] * 10], counters)
    row = summarize("copy", 1, off, on)
    assert row["accepted_per_verify"] == 3.0  # (6 accepted + 3 rows) / 3 rows
    assert row["draft_acceptance"] == 0.75 and row["output_share_from_drafts"] == 0.6
    assert row["ratio_on_off"] == 0.5 and row["identical"] == 1 and row["first_mismatch"] is None


def test_speculative_tiny_run(capsys, engine):
    # `engine` (the session's) keeps the default model's weights loaded: the benchmark's engines share them.
    argv = ["speculative", "--prompts", "2", "--max-new-tokens", "12", "--batch", "2"]
    assert bench_main([*argv, "--workloads", "copy,random", "--draft-tokens", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("CPU: ")
    assert lines[2].split()[:3] == ["workload", "batch", "requests"]
    result = json.loads(lines[-1])
    rows = result["rows"]
    assert [(r["workload"], r["batch"]) for r in rows] == [("copy", 1), ("copy", 2), ("random", 1), ("random", 2)]
    for r in rows:
        assert r["identical"] == r["requests"] == 2 and r["first_mismatch"] is None
        assert r["output_tokens_on"] == r["output_tokens_off"] > 0
        assert r["wall_s_off"] > 0 and r["wall_s_on"] > 0
        c = r["counters_on"]
        assert c["spec_accepted_tokens"] <= c["spec_draft_tokens"]
        assert c["forward_passes"] <= r["forward_passes_off"]
    random_rows = [r for r in rows if r["workload"] == "random"]
    assert all(r["output_tokens_off"] == 2 * 12 for r in random_rows)  # EOS ignored


def test_speculative_rejects_unknown_workload(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["speculative", "--workloads", "copy,poetry"])
    assert exc.value.code == 2
    assert "poetry" in capsys.readouterr().err
