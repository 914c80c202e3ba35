"""`python -m loomlm.bench grammar-corpus` on three small SchemaStore schemas, loomlm only: the counts
add up (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from loomlm.bench.grammar_corpus import CORPUS, run_corpus
from loomlm.bench.grammar_corpus_docs import order_keys


def test_corpus_counts_add_up_for_loomlm_on_three_small_schemas(tokenizer) -> None:
    # documents are serialized in schema order: through $ref and items, undeclared keys last
    schema = {
        "$defs": {"p": {"type": "object", "properties": {"x": {}, "y": {}}}},
        "properties": {"b": {"$ref": "#/$defs/p"}, "a": {"items": {"$ref": "#/$defs/p"}}},
    }
    doc = {"zz": 0, "a": [{"y": 1, "x": 2}], "b": {"q": 0, "y": 1, "x": 2}}
    assert list(order_keys(doc, schema)) == ["b", "a", "zz"]
    assert list(order_keys(doc, schema)["b"]) == ["x", "y", "q"]
    assert list(order_keys(doc, schema)["a"][0]) == ["x", "y"]
    if not CORPUS.is_dir():
        pytest.skip(f"no SchemaStore corpus at {CORPUS}")
    files = sorted(CORPUS.glob("*.json"), key=lambda p: p.stat().st_size)[:3]
    entries = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    result = run_corpus(entries, (), ["loomlm"], tokenizer, budget=30.0, memory_gb=0)
    loom = result["libraries"]["loomlm"]
    assert result["schemas"] == 3 and set(loom["per_schema"]) == {e["name"] for e in entries}
    assert loom["covered"] + loom["errors"] + loom["overruns"] + loom["bugs"] + loom["crashes"] == 3
    assert loom["valid_accepted"] <= loom["valid_docs"] <= sum(len(e["valid"]) for e in entries)
    assert loom["invalid_rejected"] <= loom["invalid_docs"] <= sum(len(e["invalid"]) for e in entries)
    covered = [e for e in entries if loom["per_schema"][e["name"]]["status"] == "covered"]
    assert loom["valid_docs"] == sum(len(e["valid"]) for e in covered)
    assert (loom["ttfm_ms_p50"] is None) == (not covered)
    assert loom["mask_steps"] >= (loom["valid_docs"] > 0)
