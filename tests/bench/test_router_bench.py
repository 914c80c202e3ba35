"""`python -m loomlm.bench router` end to end on a tiny workload (slow: it starts three two-worker
launchers and two servers)."""

from __future__ import annotations

import json

import pytest

from loomlm.bench import router

pytest.importorskip("sglang_router", reason="sglang-router is in loomlm[router], which `make test` installs")


def test_interleaved_prompts_share_their_group_prefix():
    texts = router.shared_prefix_texts(3, 2, 20)
    assert len(texts) == 6
    assert [t.split(":")[0] for t in texts] == ["Context 0", "Context 1", "Context 2"] * 2
    assert texts[0].split("\n\n")[0] == texts[3].split("\n\n")[0]


@pytest.mark.slow
def test_the_benchmark_runs_every_policy_and_both_setups(capsys):
    argv = ["--groups", "3", "--per-group", "2", "--prefix-words", "60", "--output-len", "4"]
    argv += ["--serving-prompts", "4", "--serving-output-len", "4", "--kv-tokens", "4000", "--json"]
    assert router.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["policy"] for p in result["policies"]] == ["round_robin", "power_of_two", "cache_aware"]
    assert result["identical_outputs"] is True
    assert [r["completed"] for r in result["serving"]] == [4, 4]
