"""`python -m loomlm.bench prefix` on tiny settings: the hit rate reaches the workload's ideal, the token
counts add up, and greedy outputs are the same with the cache on and off."""

from __future__ import annotations

import json

from loomlm.bench.__main__ import main as bench_main
from loomlm.bench.prefix import make_workload


def test_workload_shape_and_ideal_hit_rate():
    work = make_workload(groups=3, per_group=4, prefix_len=50, suffix_len=10, vocab_size=1000, seed=1)
    assert len(work.prompts) == 12 and all(len(p) == 60 for p in work.prompts)
    assert len({tuple(p[:50]) for p in work.prompts}) == 3
    assert work.ideal_hit_rate == 3 * 3 * 50 / (12 * 60)


def test_prefix_tiny_run(capsys, engine):
    # `engine` (the session's) keeps the default model's weights loaded: the benchmark's engines share them.
    rc = bench_main(
        [
            "prefix",
            "--groups",
            "2",
            "--per-group",
            "3",
            "--prefix-len",
            "64",
            "--suffix-len",
            "8",
            "--output-len",
            "3",
            "--policy",
            "lpm,fcfs",
            "--json",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[0].split()[0] == "run"
    total = 2 * 3 * (64 + 8)
    assert result["prompt_tokens"] == total
    assert result["ideal_hit_rate"] == round(2 * 2 * 64 / total, 4)
    assert result["hit_rate"] == result["ideal_hit_rate"]  # lpm: each prefix computed once
    assert result["cached_tokens"] + result["computed_prefill_tokens"] == total
    assert result["cache_off_computed_prefill_tokens"] == total
    assert result["same_outputs_as_cache_off"] == {"cache on (lpm)": 6, "cache on (fcfs)": 6}
    assert result["speedup"] > 0 and set(result["runs"]) == {"cache off", "cache on (lpm)", "cache on (fcfs)"}


def test_prefix_rejects_unknown_policy(capsys):
    assert bench_main(["prefix", "--policy", "lifo"]) == 2
    assert "lifo" in capsys.readouterr().err
