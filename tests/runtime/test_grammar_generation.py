"""The grammar engine in the real engine on the default model: EBNF (`ebnf` / `grammar`), recursive JSON
schemas and structural tags, sampled at temperature 1.0; grammar limits hit while decoding.

A sample the engine ends (EOS) must parse (lark, or json + jsonschema); a sample cut by max_new_tokens
must be a viable prefix: it parses once the guide's shortest completion is appended.
"""

from __future__ import annotations

import json
from collections import deque

import jsonschema
import lark
import pytest

import loomlm
from loomlm.bench.ebnf_cases import CASES
from loomlm.grammars import Vocabulary, compile_ebnf, compile_json_schema
from loomlm.lang.backends.local import LocalBackend

SAMPLES = 10
RECURSIVE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["name", "children"],
        }
    },
    "$ref": "#/$defs/node",
}


def shortest_completion(guide, text: str) -> str:
    """`text` plus bytes that make the guide accept: breadth first over bytes within a node budget;
    past it, one closing byte (`]`, `}`, `)`, a quote, `0`, `a`) is taken greedily and the search starts again."""
    state = guide.step_bytes(guide.initial_state, text.encode())
    assert state >= 0, f"not a viable prefix: {text!r}"
    done = text.encode()
    for _ in range(400):
        queue, seen = deque([(state, b"")]), {state}
        while queue and len(seen) < 3000:
            sid, tail = queue.popleft()
            if guide.is_accepting(sid):
                return (done + tail).decode("utf-8", errors="replace")
            for b in guide.next_bytes(sid).nonzero()[0].tolist():
                nxt = guide.step(sid, b)
                if nxt >= 0 and nxt not in seen:
                    seen.add(nxt)
                    queue.append((nxt, tail + bytes([b])))
        allowed = guide.next_bytes(state)
        b = next((c for c in b"]})\"'0a" if allowed[c]), int(allowed.nonzero()[0][0]))
        state, done = guide.step(state, b), done + bytes([b])
    raise AssertionError(f"no completion of {text!r}")


def _samples(engine, prompt: str, params: dict, max_new_tokens: int) -> list[dict]:
    return engine.generate(
        [prompt] * SAMPLES,
        [{**params, "max_new_tokens": max_new_tokens, "temperature": 1.0, "seed": i} for i in range(SAMPLES)],
    )


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(tokenizer)


# One grammar in the CI subset (JSON: recursion and %ignore); the other four
# under -m slow, to keep the subset within its time.
_CI_CASES = ("json",)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=() if c.name in _CI_CASES else pytest.mark.slow) for c in CASES],
)
def test_sampled_ebnf_outputs_parse(idle_engine, vocab, case) -> None:
    parser = lark.Lark(case.grammar, parser="earley", lexer="dynamic_complete")
    guide = compile_ebnf(case.grammar, vocab)
    prompt = "".join(f"Example: {v}\n" for v in case.valid) + "Example:"
    for out in _samples(idle_engine, prompt, {"ebnf": case.grammar}, 24):
        finish = out["meta_info"]["finish_reason"]["type"]
        assert finish in ("stop", "length"), out["meta_info"]
        parser.parse(out["text"] if finish == "stop" else shortest_completion(guide, out["text"]))


def test_sampled_recursive_schema_outputs_validate(idle_engine, vocab) -> None:
    guide = compile_json_schema(RECURSIVE, vocab)
    depths = []
    for out in _samples(idle_engine, "A family tree as JSON:", {"json_schema": RECURSIVE}, 48):
        finish = out["meta_info"]["finish_reason"]["type"]
        text = out["text"] if finish == "stop" else shortest_completion(guide, out["text"])
        doc = json.loads(text)
        jsonschema.validate(doc, RECURSIVE)
        depth, node = 0, doc
        while node["children"]:
            depth, node = depth + 1, node["children"][0]
        depths.append(depth)
    assert max(depths) >= 1  # the samples do nest


def test_grammar_is_an_alias_of_ebnf_and_gen_takes_it(idle_engine) -> None:
    grammar = 'start: "yes" | "no"'
    a = idle_engine.generate("Is water wet? Answer:", {"grammar": grammar, "max_new_tokens": 4, "temperature": 0})
    b = idle_engine.generate("Is water wet? Answer:", {"ebnf": grammar, "max_new_tokens": 4, "temperature": 0})
    assert a["text"] == b["text"] and a["text"] in ("yes", "no")

    @loomlm.function
    def answer(s):
        s += "Is fire hot? Answer: " + loomlm.gen("x", grammar=grammar, max_tokens=4, temperature=0)

    state = answer.run(backend=LocalBackend(idle_engine))
    assert state["x"] in ("yes", "no")
    with pytest.raises(ValueError, match="aliases"):
        idle_engine.generate("x", {"grammar": grammar, "ebnf": grammar})
    with pytest.raises(ValueError, match="cannot be combined"):
        idle_engine.generate("x", {"ebnf": grammar, "regex": "a"})


def test_structural_tag_through_the_engine(idle_engine) -> None:
    """Free text with tool calls: the model writes two calls on its own; each call's JSON validates."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    tag = {
        "type": "structural_tag",
        "structures": [{"begin": "<tool_call>", "schema": schema, "end": "</tool_call>"}],
        "triggers": ["<tool_call>"],
    }
    call = lambda city: "<tool_call>" + json.dumps({"city": city}) + "</tool_call>"
    prompt = (
        f"User: weather in Rome and Madrid?\nAssistant: Checking. {call('Rome')} {call('Madrid')}\n"
        "User: weather in Paris and Oslo?\nAssistant: Checking."
    )
    out = idle_engine.generate(
        prompt, {"structural_tag": tag, "max_new_tokens": 40, "temperature": 0, "stop": ["\nUser:"]}
    )
    bodies = [part.split("</tool_call>")[0] for part in out["text"].split("<tool_call>")[1:] if "</tool_call>" in part]
    assert len(bodies) >= 2, out["text"]
    for body in bodies:
        jsonschema.validate(json.loads(body), schema)


def test_a_grammar_limit_hit_while_decoding_fails_only_its_request(tokenizer) -> None:
    eng = loomlm.Engine(max_total_tokens=4000, random_seed=1, grammar_max_parser_items=30)
    try:
        ambiguous = 'start: s\ns: s s | "a" | "b"'
        out = eng.generate(
            "Letters:", {"ebnf": ambiguous, "max_new_tokens": 40, "min_new_tokens": 40, "temperature": 1.0, "seed": 3}
        )
        assert out["meta_info"]["finish_reason"]["type"] == "abort"
        assert "max_parser_items" in out["meta_info"]["finish_reason"]["message"]
        fine = eng.generate("Letters:", {"ebnf": 'start: "ab"', "max_new_tokens": 4})
        assert fine["text"] == "ab"
        eng.idle_integrity()
    finally:
        eng.shutdown()
