"""The grammar engine's own contracts: lazy lexing, recursion, EOS, forced bytes, limits, structural tags.

Counts only (lexer states, rules, items), never wall-clock time.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars import (
    REJECTED,
    GrammarError,
    GrammarLimits,
    Vocabulary,
    allowed_tokens,
    compile_cfg,
    compile_ebnf,
    compile_json_schema,
    json_schema_to_grammar,
)
from loomlm.grammars.grammar_ir import Alt, Grammar, Ref, Rep, Seq, Term
from loomlm.grammars.structural_tag import compile_structural_tag

BYTES_VOCAB = Vocabulary(tuple(bytes([b]) for b in range(256)) + (b"",), frozenset({256}))
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 2000},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name", "children"],
        }
    },
    "$ref": "#/$defs/node",
}


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(tokenizer)


def _tree(depth: int) -> dict:
    return {"name": f"level {depth}", "children": [_tree(depth - 1)] if depth else []}


def walk(guide, ids):
    state = guide.initial_state
    for t in ids:
        assert allowed_tokens(guide, state)[t], t
        state = guide.advance(state, t)
        assert state is not REJECTED
    return state


def test_a_string_of_maxlength_2000_costs_only_the_states_reached():
    guide = compile_cfg(Grammar({"s": Term(r'"[^"]{0,2000}"')}, "s"), BYTES_VOCAB)
    assert guide.grammar.lexer.num_states <= 2  # nothing is built before a byte is read
    assert guide.matches('"' + "a" * 2000 + '"') and not guide.matches('"' + "a" * 2001 + '"')
    # rows are filled when reached: a position's row makes its UTF-8 continuation states (about 8)
    assert guide.grammar.lexer.num_states < 10 * 2002


def test_recursive_schema_accepts_deep_trees_token_by_token(vocab, tokenizer):
    guide = compile_json_schema(TREE, vocab)
    doc = json.dumps(_tree(7))
    jsonschema.validate(json.loads(doc), TREE)
    state = walk(guide, tokenizer.encode(doc, add_special_tokens=False))
    assert guide.is_accepting(state) and allowed_tokens(guide, state)[next(iter(vocab.eos_token_ids))]
    for bad in (doc[:-1], doc.replace('"children"', '"kids"', 1), doc.replace("[]", "{}", 1)):
        assert not guide.matches(bad)


def test_array_elements_share_parser_states_and_masks(vocab, tokenizer):
    """After the first elements, a long array adds no Earley column and no pair mask: completed items
    (whose origins differ per element) do not make columns distinct."""
    schema = {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    guide = compile_json_schema(schema, vocab)
    state, counts = guide.initial_state, []
    ids = tokenizer.encode(json.dumps([{"a": i % 7} for i in range(60)]), add_special_tokens=False)
    for t in ids:
        guide.mask_row(state)
        state = guide.advance(state, t)
        assert state is not REJECTED
        counts.append((guide.grammar.num_columns, len(guide.masks.rows)))
    assert counts[len(counts) // 3] == counts[-1]


OPEN_OBJECTS = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "nick": {"type": "string"},
        "size": {"type": "integer"},
        "meta": {"type": "object", "properties": {"owner": {"type": "string"}, "tags": {"type": "array"}}},
    },
    "required": ["name"],
}


def test_masks_of_open_objects_match_the_byte_walk_and_share_walks(vocab, tokenizer):
    """Masks at every state along a document of open objects (declared keys, any other key) hold exactly
    the tokens whose bytes keep a parse alive. Two string properties are two terminals of one regex:
    their token walks are one walk under two names (the same `inside` row, not a copy)."""
    guide = compile_json_schema(OPEN_OBJECTS, vocab, strict=False)
    # declared keys in the schema's order, then undeclared ones
    doc = {"name": "x", "nick": "y z", "size": 3, "meta": {"owner": "q", "tags": [], "other": "w"}, "extra": 1}
    state, eos = guide.initial_state, list(vocab.eos_token_ids)
    for t in tokenizer.encode(json.dumps(doc), add_special_tokens=False):
        mask = allowed_tokens(guide, state)
        walked = np.array([bool(b) and guide.step_bytes(state, b) >= 0 for b in vocab.token_bytes])
        walked[eos] = guide.is_accepting(state)
        assert (mask == walked).all(), vocab.token_bytes[t]
        state = guide.advance(state, t)
        assert state is not REJECTED
    walks, lexer = guide.masks.walks, guide.grammar.lexer
    named = {}
    for lex, walk in walks.walks.items():
        ((tid, term),) = lexer.states[lex] if len(lexer.states[lex]) == 1 else ((None, None),)
        if tid is not None and tid >= 0 and lexer.names[tid] == "string":
            named.setdefault(term, []).append(walk)
    assert any(len({id(w.inside) for w in ws}) == 1 < len(ws) for ws in named.values())


def test_eos_exactly_where_the_parse_can_end():
    guide = compile_ebnf('start: "a" "b"* | "c"', BYTES_VOCAB)
    eos = 256
    for text, can_end in ((b"", False), (b"a", True), (b"ab", True), (b"c", True), (b"ac", None)):
        state = guide.step_bytes(guide.initial_state, text) if text else guide.initial_state
        if can_end is None:
            assert state < 0
            continue
        assert bool(allowed_tokens(guide, state)[eos]) is can_end
        assert (guide.advance(state, eos) is REJECTED) is not can_end


def test_forced_bytes_jump_over_keys_the_schema_fixes(vocab):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    guide = compile_json_schema(schema, vocab, whitespace="compact")
    assert guide.forced_bytes(guide.initial_state) == b'{"name":"'
    ebnf = compile_ebnf('start: "hello" " " NAME\nNAME: /[a-z]+/', vocab)
    assert ebnf.forced_bytes(ebnf.initial_state) == b"hello "


def test_json_schema_grammar_keeps_any_value_unbounded():
    grammar = json_schema_to_grammar({"type": "object", "additionalProperties": True})
    guide = compile_cfg(grammar, BYTES_VOCAB)
    deep = json.dumps({"a": [[[[[[{"b": [1]}]]]]]]})  # deeper than the regex compiler's bound of 2
    assert guide.matches(deep)


def test_parser_item_limit_fails_with_a_named_error():
    limits = GrammarLimits(max_parser_items=40)
    guide = compile_ebnf('start: s\ns: s s | "a"', BYTES_VOCAB, limits)  # ambiguous: items grow per byte
    with pytest.raises(GrammarError, match="max_parser_items"):
        guide.step_bytes(guide.initial_state, b"a" * 40)


def test_lexer_state_limit_fails_with_a_named_error():
    guide = compile_cfg(Grammar({"s": Term("[ab]{0,500}c")}, "s"), BYTES_VOCAB, GrammarLimits(max_lexer_states=50))
    with pytest.raises(GrammarError, match="max_lexer_states"):
        guide.step_bytes(guide.initial_state, b"a" * 100)


def test_rule_limit_fails_at_compile_time():
    grammar = Grammar({"s": Rep(Alt((Ref("x"), Term("y"))), 0, 5000), "x": Seq((Term("a"), Term("b")))}, "s")
    with pytest.raises(GrammarError, match="max_grammar_rules"):
        compile_cfg(grammar, BYTES_VOCAB, GrammarLimits(max_grammar_rules=1000))


def test_mask_fuel_limit_fails_with_a_named_error(vocab):
    guide = compile_json_schema({"type": "string"}, vocab, limits=GrammarLimits(max_mask_fuel=10))
    with pytest.raises(GrammarError, match="max_mask_fuel"):
        guide.fill_bitmask(guide.step_bytes(guide.initial_state, b'"'), np.zeros(1536, np.int32))


def test_bad_grammars_are_clear_errors():
    for text, needle in (("start: foo", "foo"), ("start: /a(?<=b)/", "lookbehind"), ("start: (", "EBNF")):
        with pytest.raises(GrammarError, match=needle):
            compile_ebnf(text, BYTES_VOCAB)


TOOLS = {
    "type": "structural_tag",
    "structures": [
        {
            "begin": '<tool_call>{"name": "get_weather", "arguments": ',
            "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "end": "}</tool_call>",
        },
        {
            "begin": '<tool_call>{"name": "add", "arguments": ',
            "schema": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
            "end": "}</tool_call>",
        },
    ],
    "triggers": ["<tool_call>"],
}


def test_structural_tag_free_text_with_two_tool_calls(vocab, tokenizer):
    guide = compile_structural_tag(TOOLS, vocab)
    text = (
        'I will look it up. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> '
        'and add: <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call> Done.'
    )
    state = walk(guide, tokenizer.encode(text, add_special_tokens=False))
    assert guide.is_accepting(state)
    assert guide.matches("no call at all")
    assert not guide.matches('<tool_call>{"name": "get_weather", "arguments": {"town": "Paris"}}</tool_call>')
    assert not guide.matches('<tool_call>{"name": "add", "arguments": {"a": 1, "b": "2"}}</tool_call>')
    assert not guide.matches("<tool_call>unfinished")


def test_structural_tag_constraint_after_reasoning(vocab):
    spec = {
        "type": "structural_tag",
        "format": {
            "type": "sequence",
            "elements": [
                {"type": "tag", "begin": "<think>", "content": {"type": "any_text"}, "end": "</think>"},
                {"type": "json_schema", "json_schema": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            ],
        },
    }
    guide = compile_structural_tag(spec, BYTES_VOCAB)
    assert guide.matches('<think>6 * 7, not </thinking> yet</think>{"n": 42}')
    assert not guide.matches('<think>x</think>{"n": "42"}')
    assert not guide.matches('{"n": 42}')


def test_conditions_with_negations_agree_with_jsonschema(vocab, tokenizer):
    """`if` conditions built from `not` (a negated negation: the complement of "a string other than
    these" is those strings) and contrary `allOf` combinations, against jsonschema as the oracle."""
    a = {"properties": {"ep": {"const": "A"}}, "required": ["ep"]}
    b = {"properties": {"ep": {"const": "B"}}, "required": ["ep"]}
    docs = [{"ep": "C", "sh": True}, {"ep": "A", "sh": True}, {"ep": "B", "sh": True}, {"sh": True}, {"ep": "C"}]
    for cond in ({"not": {"anyOf": [a, b]}}, {"not": a}, {"not": {"not": a}}, {"anyOf": [a, b]}):
        schema = {
            "type": "object",
            "properties": {"ep": {"type": "string"}, "sh": {"type": "boolean"}},
            "if": cond,
            "then": {"properties": {"sh": False}},
        }
        guide = compile_json_schema(schema, vocab, strict=False)
        for doc in docs:
            state = guide.initial_state
            for t in tokenizer.encode(json.dumps(doc), add_special_tokens=False):
                state = guide.advance(state, t)
                if state is REJECTED:
                    break
            ours = state is not REJECTED and guide.is_accepting(state)
            assert ours == jsonschema.Draft202012Validator(schema).is_valid(doc), (cond, doc)


def test_discriminated_conditions_stay_exact_past_the_alternative_limit():
    """Six if/then conditions on one required property's value: their product has thousands of raw
    combinations, but two different consts for one required property are contrary, so pruning
    leaves a few and no condition is widened away (jsonschema is the oracle)."""
    kinds = ["a", "b", "c", "d", "e", "f"]
    schema = {
        "type": "object",
        "properties": {"kind": {"enum": kinds}, **{f"x{k}": {"type": "integer"} for k in kinds}},
        "required": ["kind"],
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": k}}, "required": ["kind"]},
                "then": {"required": [f"x{k}"]},
                "else": {"properties": {f"x{k}": False}},
            }
            for k in kinds
        ],
    }
    guide = compile_json_schema(schema, BYTES_VOCAB, strict=False)
    docs = [doc for k in kinds for doc in ({"kind": k}, {"kind": k, f"x{k}": 1}, {"kind": k, "xa": 1, "xf": 2})]
    for doc in docs:
        assert guide.matches(json.dumps(doc)) == jsonschema.Draft202012Validator(schema).is_valid(doc), doc


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.sampled_from(["x", "y", "zz"]), st.integers(0, 3), st.booleans()), min_size=1, max_size=6
    ),
    lo=st.integers(0, 4),
    span=st.one_of(st.none(), st.integers(0, 3)),
    doc=st.lists(st.one_of(st.sampled_from(["x", "y", "zz", "w"]), st.integers(0, 4), st.booleans()), max_size=7),
)
def test_unique_items_over_constants_agree_with_jsonschema(values, lo, span, doc):
    """uniqueItems over an item enum (a rule per subset of the values used) against jsonschema."""
    schema = {"type": "array", "items": {"enum": values}, "uniqueItems": True, "minItems": lo}
    if span is not None:
        schema["maxItems"] = lo + span
    distinct = {json.dumps(v) for v in values}
    if lo > len(distinct):
        return
    guide = compile_json_schema(schema, BYTES_VOCAB, strict=False)
    for candidate in (doc, doc[: len(doc) // 2], list(dict.fromkeys(map(json.dumps, doc)))):
        candidate = [json.loads(c) if isinstance(c, str) and c[:1] in '"tf0123456789' else c for c in candidate]
        expected = jsonschema.Draft202012Validator(schema).is_valid(candidate)
        assert guide.matches(json.dumps(candidate)) == expected, (schema, candidate)
