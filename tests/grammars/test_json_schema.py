"""json_schema_to_regex: keyword semantics, whitespace modes, errors, and the regex dialect.

Membership is checked with Python `re.fullmatch`; every produced pattern is also parsed by
interegular (and turned into its FSM when small enough to be quick), the dialect the DFA compiler reads.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import interegular
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.json_schema import json_schema_to_regex


def compile_schema(schema, **kwargs) -> str:
    pattern = json_schema_to_regex(schema, **kwargs)
    re.compile(pattern)
    parsed = interegular.parse_pattern(pattern)
    if len(pattern) <= 4000:
        parsed.to_fsm()
    return pattern


def accepts(pattern: str, value, **dumps) -> bool:
    text = value if isinstance(value, str) and dumps.pop("raw", False) else json.dumps(value, **dumps)
    return re.fullmatch(pattern, text) is not None


def check(schema, good, bad, **kwargs):
    pattern = compile_schema(schema, **kwargs)
    for value in good:
        assert accepts(pattern, value), f"{value!r} should match {schema}"
    for value in bad:
        assert not accepts(pattern, value), f"{value!r} should not match {schema}"
    return pattern


def raises(schema, *words, **kwargs):
    with pytest.raises(GrammarError) as info:
        json_schema_to_regex(schema, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"
    return str(info.value)


# ---------------------------------------------------------------- types


def test_scalar_types():
    check({"type": "null"}, [None], [0, False, "null"])
    check({"type": "boolean"}, [True, False], [0, 1, None, "true"])
    check({"type": "string"}, ["", "a b", "é", "😀", 'quote " and \\ and \n'], [1, None, ["a"]])
    check({"type": "number"}, [0, -1, 1.5, -2.25e-08, 1e100, 12345678901234567890], ["1", None, True])
    check({"type": "integer"}, [0, -7, 10**30], [1.5, 1.0, "1", True])


def test_integer_accepts_zero_fraction_only_when_not_strict():
    pattern = compile_schema({"type": "integer"}, strict=False)
    assert accepts(pattern, 1.0) and accepts(pattern, -3) and not accepts(pattern, 1.5)


def test_type_list_and_nullable():
    check({"type": ["integer", "string"]}, [1, "x"], [1.5, None, True])
    check({"type": "string", "nullable": True}, ["x", None], [1])
    check({"type": ["array", "object", "null"]}, [[1, 2], {"a": 1}, None], [1, "a"], strict=False)


def test_json_text_rejects_leading_zeros_and_bad_escapes():
    pattern = compile_schema({"type": ["number", "string"]})
    for text in ["01", "1.", ".5", "+1", '"\\x41"', '"\\u12"', '"a\nb"', '"\\ud800"', "NaN"]:
        assert not re.fullmatch(pattern, text), text
    for text in ['"\\u00e9"', '"\\ud83d\\ude00"', '"\\/"', "-0", "1E+2"]:
        assert re.fullmatch(pattern, text), text


def test_untyped_schema_spans_all_types_unless_strict_infers_one():
    lenient = check({"minLength": 2}, ["ab", 1, None, [], {}], ["a"], strict=False)
    assert lenient
    check({"minLength": 2}, ["ab"], ["a", 1, None])  # strict: the keywords say "string"
    check({}, [1, "a", None, [1, [2]], {"a": [1]}, {"a": {"b": 1}}], [])
    check({"not": {"type": "string"}}, [{"a": [1]}, 1], ["a"])  # objects stay open: nothing is said of them


# ---------------------------------------------------------------- objects


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name"],
}


def test_properties_in_order_with_optional_members():
    pattern = compile_schema(PERSON)
    for value in [
        {"name": "a"},
        {"name": "a", "age": 3},
        {"name": "a", "tags": []},
        {"name": "a", "age": 3, "tags": [1, "x"]},
    ]:
        assert accepts(pattern, value) and accepts(pattern, value, separators=(",", ":"))
    assert not accepts(pattern, {"age": 3})  # required missing
    assert not accepts(pattern, {"age": 3, "name": "a"})  # out of schema order
    assert not accepts(pattern, {"name": "a", "age": "3"})
    assert not accepts(pattern, {"name": "a", "other": 1})  # strict: closed


def test_all_optional_properties_allow_empty_object():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    check(schema, [{}, {"a": 1}, {"b": 2}, {"a": 1, "b": 2}], [{"b": 2, "a": 1}, {"a": 1, "a ": 2}])


def test_strict_closes_objects_and_lenient_opens_them():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    check(schema, [{}, {"a": 1}], [{"b": 1}, {"a": 1, "b": 2}])
    lenient = check(
        schema, [{}, {"a": 1}, {"b": "x"}, {"a": 1, "b": [1], "c": {}}], [{"a": "x"}, {"b": 1, "a": "x"}], strict=False
    )
    # an extra key never repeats a declared name, whatever its spelling
    assert not re.fullmatch(lenient, '{"a": 1, "a": "x"}')
    assert not re.fullmatch(lenient, '{"\\u0061": "x"}')
    check({"type": "object"}, [{}], [{"a": 1}])
    check({"type": "object"}, [{}, {"a": 1}], [[]], strict=False)


def test_additional_properties():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}}
    check(schema, [{"a": 1, "b": "x"}, {"b": "x", "c": "y"}, {}], [{"b": 1}, {"a": 1, "b": 2}, {"a": "s"}])
    check({"type": "object", "additionalProperties": True}, [{"x": [1]}, {}], [[]])
    check(
        {"type": "object", "properties": {"a": {}}, "additionalProperties": False}, [{"a": 1}], [{"b": 1}], strict=False
    )


def test_required_property_must_be_allowed():
    raises({"type": "object", "required": ["a"]}, "required", "'a'", "strict=True")
    check(
        {"type": "object", "required": ["a"], "additionalProperties": {"type": "integer"}},
        [{"a": 1}, {"a": 1, "b": 2}],
        [{}, {"b": 2}, {"a": "x"}],
    )
    check({"type": "object", "required": ["a"]}, [{"a": [1]}], [{}], strict=False)


def test_property_counts_and_names():
    check({"type": "object", "maxProperties": 2}, [{}, {"a": 1, "b": 2}], [{"a": 1, "b": 2, "c": 3}], strict=False)
    check({"type": "object", "minProperties": 1}, [{"a": 1}], [{}], strict=False)
    check(
        {"type": "object", "propertyNames": {"maxLength": 2}, "additionalProperties": True},
        [{"ab": 1}, {}],
        [{"abc": 1}],
    )
    check(
        {"type": "object", "propertyNames": {"enum": ["x", "y"]}, "additionalProperties": {"type": "integer"}},
        [{"x": 1, "y": 2}, {"y": 1}],
        [{"z": 1}, {"x": "s"}],
    )
    raises({"type": "object", "properties": {"a": {}}, "minProperties": 1}, "minProperties")


# ---------------------------------------------------------------- arrays


def test_items_and_counts():
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}
    check(schema, [[1], [1, 2, 3]], [[], [1, 2, 3, 4], [1, "a"], ["a"]])
    check({"type": "array", "items": {"type": "boolean"}}, [[], [True, False]], [[1]])
    check({"type": "array", "maxItems": 0}, [[]], [[1]])


def test_prefix_items():
    schema = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False}
    check(schema, [[], [1], [1, "a"]], [[1, "a", 2], ["a"], [1, 2]])
    schema = {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}, "minItems": 2}
    check(schema, [[1, "a"], [1, "a", "b"]], [[1], [1, 2], []])
    # draft-4 tuple form
    schema = {"type": "array", "items": [{"type": "integer"}, {"type": "null"}], "additionalItems": False}
    check(schema, [[1, None], [1]], [[1, None, 2], [None]])
    check({"type": "array", "items": [{"type": "integer"}]}, [[1, "x", [2]]], [["x"]], strict=False)


def test_unsatisfiable_item_counts():
    raises({"type": "array", "minItems": 2, "maxItems": 1}, "minItems")
    raises({"type": "array", "prefixItems": [{}], "items": False, "minItems": 2}, "minItems")


# ---------------------------------------------------------------- enum / const


def test_enum_and_const_values():
    check(
        {"enum": ["a", 1, None, True, [1, "b"], {"k": [False]}]},
        ["a", 1, 1.0, None, True, [1, "b"], {"k": [False]}],
        ["b", 2, False, 0, [1], {"k": [0]}, {}],
    )
    check({"const": {"a": 1, "b": [2]}}, [{"a": 1, "b": [2]}], [{"a": 1}, {"a": 1, "b": [2, 3]}])
    check({"const": 0}, [0, -0.0, 0.0], [False, "0", 1])
    check({"const": 'line\n"tab"\t\\ é 😀'}, ['line\n"tab"\t\\ é 😀'], ["line"])
    pattern = compile_schema({"const": "é😀"})
    assert re.fullmatch(pattern, '"é😀"') and re.fullmatch(pattern, json.dumps("é😀"))


def test_enum_respects_other_keywords():
    check({"type": "string", "enum": ["a", "bb", 1]}, ["a", "bb"], [1])
    check({"enum": ["a", "bbb", 5, 50], "maxLength": 2, "maximum": 10}, ["a", 5], ["bbb", 50], strict=False)
    raises({"type": "integer", "enum": ["a"]}, "enum")
    raises({"enum": []}, "enum")


def test_enum_whitespace_follows_style():
    pattern = compile_schema({"const": [1, {"a": 2}]}, whitespace="compact")
    assert re.fullmatch(pattern, '[1,{"a":2}]') and not re.fullmatch(pattern, '[1, {"a": 2}]')


# ---------------------------------------------------------------- strings


def test_string_lengths_count_characters_not_escapes():
    schema = {"type": "string", "minLength": 2, "maxLength": 3}
    check(schema, ["ab", "abc", "\n\t", "😀😀", 'é"x'], ["a", "abcd", "😀"])
    pattern = compile_schema(schema)
    assert re.fullmatch(pattern, '"\\ud83d\\ude00a"')  # a surrogate pair is one character
    raises({"type": "string", "minLength": 3, "maxLength": 2}, "minLength", "maxLength")


def test_pattern_full_match_when_strict_search_when_not():
    check({"type": "string", "pattern": "^[a-z]+[0-9]{2}$"}, ["ab12"], ["ab1", "AB12", " ab12"])
    check({"type": "string", "pattern": "a+"}, ["aa"], ["xaay"])
    check({"type": "string", "pattern": "a+"}, ["aa", "xaay"], ["xy"], strict=False)
    check({"type": "string", "pattern": "^a|b$"}, ["ab", "b"], ["ba"], strict=False)


def test_pattern_characters_are_json_encoded():
    check({"type": "string", "pattern": '^"\\\\\\n\\t\\u00e9.$'}, ['"\\\n\té!'], ['"\\\n\té\n'])
    check({"type": "string", "pattern": "^[^a]\\d\\w\\s$"}, ["é1_ ", "\n9x\t", "\u20001a\u3000"], ["a1_ ", "b1_x"])
    pattern = compile_schema({"type": "string", "pattern": "^[a-c]+$"})
    assert re.fullmatch(pattern, '"abc"') and not re.fullmatch(pattern, '"\\u0061"')  # json.dumps spellings
    check({"type": "string", "pattern": "^(?:ab|c){2,3}x?$"}, ["abc", "cccx"], ["c", "abcabcab"])


def test_pattern_with_lengths():
    check({"type": "string", "pattern": "^[a-z]*$", "minLength": 2, "maxLength": 3}, ["ab", "abc"], ["a", "abcd"])
    check({"type": "string", "pattern": "^[0-9]{3}$", "maxLength": 5}, ["123"], ["12"])
    # maxLength caps the repetitions of an unbounded pattern (strict: a sound narrowing) ...
    check({"type": "string", "pattern": "^(ab)+$", "maxLength": 5}, ["ab", "abab"], ["ababab", "a"])
    check(
        {"type": "string", "format": "uri", "minLength": 1, "maxLength": 200},
        ["https://example.com/" + "a" * 20],
        ["https://example.com/" + "a" * 181],
    )
    # ... but a minLength the pattern does not meet cannot be expressed
    raises({"type": "string", "pattern": "^(ab)+$", "minLength": 3}, "pattern", "minLength")


@pytest.mark.parametrize(
    "pattern,word",
    [
        ("(?=a)", "lookahead"),  # the regex path (a byte DFA) cannot read them; the grammar engine can
        ("(?<=a)b", "lookbehind"),
        ("\\bx", "word boundar"),
        ("(a)\\1", "backreference"),
        ("a^b", "anchor"),
        ("\\p{L}", "Unicode"),
        ("[b-a]", "out of order"),
        ("a**", "repeat"),
    ],
)
def test_unsupported_patterns(pattern, word):
    raises({"type": "string", "pattern": pattern}, "pattern", word)


FORMAT_CASES = {
    "date": (
        ["2024-02-29", "2000-02-29", "1999-12-31", "0001-01-01"],
        ["2023-02-29", "1900-02-29", "2024-13-01", "2024-04-31", "24-01-01", "0000-01-01"],
    ),
    "time": (["12:30:00Z", "23:59:60.5+01:00"], ["24:00:00Z", "12:30:00"]),
    "date-time": (["2024-01-02T03:04:05Z", "2024-01-02t03:04:05.123-05:30"], ["2024-01-02 03:04:05Z"]),
    "email": (["a.b+c@example.com", "x@y"], ["a@", "@b.c", "a b@c.d", "a..b@c.d"]),
    "uuid": (["123e4567-e89b-12d3-a456-426614174000"], ["123e4567e89b12d3a456426614174000"]),
    "uri": (["https://example.com/a?b=1#c", "urn:isbn:0451450523"], ["example.com", "http://a b"]),
    "ipv4": (["192.168.0.1", "0.0.0.0"], ["256.1.1.1", "01.2.3.4", "1.2.3"]),
    "hostname": (["example.com", "a-b.c1"], ["-a.com", "a_b.com", "a..b"]),
    "ipv6": (["::1", "fe80::1:2", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.1"], ["1::2::3", "12345::", ":"]),
    "duration": (["P3Y6M4DT12H30M5S", "PT1H", "P2W", "P1D"], ["P", "PT", "1D", "P1H"]),
    "uri-reference": (["../a/b?c", "https://x.y", ""], ["a b"]),
    "json-pointer": (["", "/a/b~0c~1d", "/"], ["a", "/~2"]),
    "byte": (["", "YWJj", "YWI=", "YQ=="], ["YWJ", "Y==="]),
}


@pytest.mark.parametrize("name", sorted(FORMAT_CASES))
def test_formats(name):
    good, bad = FORMAT_CASES[name]
    check({"type": "string", "format": name}, good, bad)


def test_unknown_and_annotation_formats():
    check({"type": "string", "format": "password"}, ["x"], [1])
    raises({"type": "string", "format": "color"}, "format", "color")
    check({"type": "string", "format": "color"}, ["anything"], [1], strict=False)


# ---------------------------------------------------------------- numbers


def test_integer_ranges():
    check({"type": "integer", "minimum": 0}, [0, 7, 10**20], [-1, -(10**20)])
    check({"type": "integer", "minimum": -15, "maximum": 204}, [-15, -9, 0, 99, 204], [-16, 205, 1000])
    check({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 10}, [4, 9], [3, 10])
    check({"type": "integer", "minimum": 3, "exclusiveMinimum": True}, [4], [3])  # draft 4
    check({"type": "integer", "maximum": 2.5}, [2, -100], [3])
    raises({"type": "integer", "minimum": 5, "maximum": 4}, "integer", "bounds")


@settings(max_examples=60, deadline=None)
@given(
    lo=st.one_of(st.none(), st.integers(-2000, 2000)),
    hi=st.one_of(st.none(), st.integers(-2000, 2000)),
    values=st.lists(st.integers(-3000, 3000), min_size=1, max_size=15),
)
def test_integer_ranges_agree_with_arithmetic(lo, hi, values):
    schema = {"type": "integer", **({} if lo is None else {"minimum": lo}), **({} if hi is None else {"maximum": hi})}
    if lo is not None and hi is not None and lo > hi:
        return
    pattern = re.compile(json_schema_to_regex(schema))
    for v in values + [lo or 0, hi or 0]:
        assert (pattern.fullmatch(str(v)) is not None) == ((lo is None or v >= lo) and (hi is None or v <= hi))


@settings(max_examples=60, deadline=None)
@given(
    lo=st.one_of(st.none(), st.decimals(-100, 100, places=2)),
    hi=st.one_of(st.none(), st.decimals(-100, 100, places=2)),
    lo_x=st.booleans(),
    hi_x=st.booleans(),
    values=st.lists(st.decimals(-150, 150, places=3), min_size=1, max_size=15),
)
def test_number_ranges_agree_with_arithmetic(lo, hi, lo_x, hi_x, values):
    schema = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_x else "minimum"] = float(lo)
    if hi is not None:
        schema["exclusiveMaximum" if hi_x else "maximum"] = float(hi)
    try:
        pattern = re.compile(json_schema_to_regex(schema))
    except GrammarError:
        assert lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_x or hi_x)))
        return
    for v in values:
        ok = (lo is None or (v > lo if lo_x else v >= lo)) and (hi is None or (v < hi if hi_x else v <= hi))
        assert (pattern.fullmatch(str(v)) is not None) == ok, (schema, v)


def test_number_bounds():
    check({"type": "number", "minimum": 1.5, "exclusiveMaximum": 3}, [1.5, 2, 2.999, 1.75], [1.49, 3, 3.0, -2])
    # a bound of 0 keeps exponent notation, other bounds need plain decimals
    check({"type": "number", "exclusiveMinimum": 0}, [1e-05, 2.5, 1e20], [0, -1.5, 0.0, -1e-5])
    check({"type": "number", "maximum": 0}, [0, -1e-05, -3.25], [1e-05, 2])
    check({"type": "number", "minimum": 1}, [1, 1.5, 100000], [0.5, 1e-05])


def test_multiple_of():
    check({"type": "integer", "multipleOf": 5}, [0, 5, -10, 1235], [3, 11])
    check({"type": "number", "multipleOf": 0.01, "minimum": 0}, [0, 1.25, 10, 0.1], [1.255, -1])
    check({"type": "number", "multipleOf": 1}, [3, -4], [1.5])
    check({"type": "integer", "multipleOf": 2, "exclusiveMinimum": 0}, [2, 10, 1234], [0, -2, 3])
    check({"type": "integer", "multipleOf": 2, "maximum": 0}, [0, -2, -10], [2, -3])
    raises({"type": "integer", "multipleOf": 2, "minimum": 1}, "multipleOf")
    raises({"type": "integer", "multipleOf": 3}, "multipleOf")
    check({"type": "integer", "multipleOf": 3}, [3, 4], [1.5], strict=False)


# ---------------------------------------------------------------- composition and references


def test_any_of_and_one_of():
    check({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}, [1, "a"], ["ab", None])
    check({"oneOf": [{"type": "null"}, {"const": "x"}]}, [None, "x"], ["y"])
    check({"anyOf": [False, {"type": "null"}]}, [None], [1])


def test_all_of_merges():
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]},
            {"properties": {"a": {"maximum": 5}, "b": {"type": "string"}}},
        ]
    }
    check(schema, [{"a": 0}, {"a": 5, "b": "x"}], [{"a": 6}, {"b": "x"}, {"a": -1}])
    check({"allOf": [{"type": ["integer", "string"]}, {"type": ["number", "null"]}]}, [3], ["a", None, 1.5])
    raises({"allOf": [{"type": "integer"}, {"type": "string"}]}, "unsatisfiable")


def test_siblings_distribute_into_any_of():
    schema = {
        "type": "object",
        "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
        "required": ["kind"],
        "anyOf": [
            {"properties": {"kind": {"const": "a"}}, "required": ["n"]},
            {"properties": {"kind": {"const": "b"}}},
        ],
    }
    check(schema, [{"kind": "a", "n": 1}, {"kind": "b"}, {"kind": "b", "n": 2}], [{"kind": "a"}, {"kind": "c"}])


def test_refs():
    schema = {
        "$defs": {
            "pos": {"type": "integer", "minimum": 1},
            "pair": {
                "type": "array",
                "prefixItems": [{"$ref": "#/$defs/pos"}, {"$ref": "#/definitions/name"}],
                "items": False,
                "minItems": 2,
            },
        },
        "definitions": {"name": {"type": "string"}},
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/pair"}, "q": {"$ref": "#/$defs/pos"}},
    }
    check(schema, [{"p": [1, "a"]}, {"q": 3}], [{"p": [0, "a"]}, {"q": 0}])
    check({"$defs": {"a~b/c": {"type": "null"}}, "$ref": "#/$defs/a~0b~1c"}, [None], [1])
    check({"$defs": {"x": {"$anchor": "thing", "type": "null"}}, "$ref": "#thing"}, [None], [1])
    check(
        {
            "$id": "https://example.com/root.json",
            "$defs": {"x": {"$id": "sub/x.json", "type": "boolean"}},
            "$ref": "sub/x.json",
        },
        [True],
        [1],
    )


def test_ref_errors():
    raises({"type": "object", "properties": {"next": {"$ref": "#"}}}, "recursive $ref", "#/properties/next")
    raises({"$ref": "#/$defs/missing"}, "$ref", "unresolvable")
    raises({"$ref": "https://example.com/other.json"}, "$ref", "another document")


def test_boolean_schemas_and_not():
    assert compile_schema(True) == compile_schema({})
    raises(False, "unsatisfiable", "false schema at #")
    check({"type": "object", "properties": {"a": False, "b": True}}, [{}, {"b": [1]}], [{"a": 1}])
    check({"not": {"type": ["string", "null"]}}, [1, True, []], ["a", None], strict=False)
    check({"not": {"type": "integer"}, "type": "number"}, [1.5], [1, 2.0], strict=False)
    raises({"not": {"pattern": "a"}}, "not", "pattern")
    check({"not": {"pattern": "a"}}, ["a", 1], [], strict=False)  # not negatable: ignored


def test_not_if_then_else_and_exclusive_one_of():
    check({"type": "integer", "not": {"minimum": 3, "maximum": 5}}, [2, 6, -1], [3, 5, "a"])
    check(
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "not": {"required": ["a"]},
            "additionalProperties": True,
        },
        [{}, {"b": 1}],
        [{"a": 1}],
    )
    # strict mode still closes the object: the negation does not open it
    check(
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {}}, "not": {"required": ["a"]}},
        [{}, {"b": 1}],
        [{"a": 1}, {"c": 1}],
    )
    schema = {"type": "integer", "if": {"minimum": 10}, "then": {"maximum": 20}, "else": {"maximum": 0}}
    check(schema, [10, 20, 0, -5], [21, 5, 1])
    schema = {"oneOf": [{"type": "integer", "maximum": 5}, {"type": "integer", "minimum": 3}]}
    check(schema, [1, 6, -3], [3, 4, 5, "a"])
    # branches whose complement the compiler cannot build: oneOf acts as anyOf
    check(
        {"oneOf": [{"type": "string", "pattern": "^a"}, {"type": "string", "pattern": "b$"}]},
        ["a", "b", "ab"],
        [1],
        strict=False,
    )


def test_contains_and_dependencies():
    schema = {
        "type": "array",
        "items": {"type": "integer"},
        "contains": {"minimum": 5},
        "minContains": 2,
        "maxContains": 3,
    }
    check(schema, [[5, 6], [1, 5, 2, 6, 7]], [[], [5], [5, 6, 7, 8], [5, 6, "a"]], strict=False)
    check({"type": "array", "contains": {"type": "null"}}, [[None], [1, None, 2]], [[], [1]])
    schema = {
        "type": "object",
        "properties": {"card": {"type": "string"}, "billing": {"type": "string"}},
        "dependentRequired": {"billing": ["card"]},
    }
    check(schema, [{}, {"card": "x"}, {"card": "x", "billing": "y"}], [{"billing": "y"}])
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {}},
        "dependentSchemas": {"a": {"properties": {"b": {"type": "string"}}, "required": ["b"]}},
    }
    check(schema, [{}, {"a": 1, "b": "x"}, {"b": 2}], [{"a": 1}, {"a": 1, "b": 2}])


def test_pydantic_model_and_json_text():
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        name: str
        price: float
        tags: list[str] = []

    pattern = compile_schema(Item)
    assert accepts(pattern, {"name": "x", "price": 1.5}) and accepts(pattern, {"name": "x", "price": 2, "tags": ["a"]})
    assert not accepts(pattern, {"name": "x"})
    assert compile_schema(json.dumps({"type": "integer"})) == compile_schema({"type": "integer"})


# ---------------------------------------------------------------- whitespace


def test_whitespace_modes():
    value = {"a": [1, 2], "b": {"c": None}}
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "integer"}},
            "b": {"type": "object", "properties": {"c": {"type": "null"}}},
        },
    }
    default = compile_schema(schema)
    assert accepts(default, value) and accepts(default, value, separators=(",", ":"))
    assert not accepts(default, value, indent=2)
    compact = compile_schema(schema, whitespace="compact")
    assert accepts(compact, value, separators=(",", ":")) and not accepts(compact, value)
    flexible = compile_schema(schema, whitespace="flexible")
    assert accepts(flexible, value, indent=2) and accepts(flexible, value) and accepts(flexible, {}, indent=4)
    assert not re.fullmatch(flexible, "{" + " " * 9 + "}")
    custom = compile_schema(schema, whitespace=r"\n?")
    assert re.fullmatch(custom, '{\n"a"\n:\n[\n1,2]}') and not re.fullmatch(custom, '{ "a": []}')
    raises(schema, "whitespace", whitespace="(")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "schema,words",
    [
        (5, ["object or a boolean"]),
        ([], ["object or a boolean"]),
        ("{not json", ["invalid JSON"]),
        ({"type": "text"}, ["type", "#"]),
        ({"type": "string", "minLength": -1}, ["minLength", "non-negative"]),
        (
            {"type": "object", "properties": {"a": {"type": "string", "maxLength": "3"}}},
            ["maxLength", "#/properties/a"],
        ),
        ({"required": "a"}, ["required"]),
        ({"properties": []}, ["properties"]),
        ({"anyOf": []}, ["anyOf"]),
        ({"type": "number", "minimum": "0"}, ["minimum"]),
        ({"type": "number", "minimum": 3, "maximum": 2}, ["number", "bounds"]),
        ({"type": "array", "uniqueItems": True}, ["uniqueItems", "not supported"]),
        ({"type": "object", "patternProperties": {"a": {}}}, ["patternProperties"]),
        ({"type": "string", "colour": "red"}, ["colour", "unknown keyword"]),
        ({"$dynamicRef": "#x"}, ["$dynamicRef"]),
        ({"items": {"items": {"uniqueItems": True}}}, ["uniqueItems", "#/items/items"]),
    ],
)
def test_errors_name_keyword_and_location(schema, words):
    raises(schema, *words)


def test_lenient_mode_ignores_narrowing_and_unknown_keywords():
    check({"type": "array", "uniqueItems": True, "x-extension": 1}, [[1, 1]], ["a"], strict=False)
    check(
        {
            "title": "t",
            "description": "d",
            "default": 1,
            "examples": [1],
            "$comment": "c",
            "deprecated": True,
            "readOnly": True,
            "type": "integer",
        },
        [1],
        ["a"],
    )


def test_any_value_is_depth_bounded():
    from loomlm.grammars import json_schema

    assert json_schema.ANY_VALUE_DEPTH == 2
    pattern = compile_schema({})
    assert accepts(pattern, [[1]]) and accepts(pattern, {"a": {"b": 1}}) and not accepts(pattern, [[[1]]])
    assert not accepts(pattern, {"a": {"b": []}})
    pattern = compile_schema({"type": "array"}, strict=False)  # any array: the same bound
    assert accepts(pattern, [[1], {"a": 2}]) and not accepts(pattern, [[[1]]])
    pattern = compile_schema({"type": "array", "items": {"type": "array"}})  # bound below each schema
    assert accepts(pattern, [[[1]]]) and not accepts(pattern, [[[[1]]]])


def test_large_values_and_decimal_consistency():
    pattern = compile_schema({"const": 0.1})
    assert accepts(pattern, 0.1) and re.fullmatch(pattern, "0.10") and not re.fullmatch(pattern, "0.11")
    assert Decimal("0.1") == Decimal(repr(0.1))


# ---------------------------------------------------------------- more semantics


@settings(max_examples=80, deadline=None)
@given(
    names=st.lists(st.text(alphabet='ab/"\\é\n', max_size=3), max_size=4),
    keys=st.lists(st.text(alphabet='ab/"\\é\nc', max_size=4), min_size=1, max_size=8),
)
def test_extra_keys_never_spell_a_declared_name(names, keys):
    from loomlm.grammars.json_strings import key_not_in

    pattern = re.compile(key_not_in(names))
    for key in keys + names:
        for ensure_ascii in (True, False):
            assert (pattern.fullmatch(json.dumps(key, ensure_ascii=ensure_ascii)) is not None) == (key not in names)


def test_negated_enums_and_non_integers():
    check({"not": {"enum": ["a", 1, None]}}, ["b", 2, 1.5, True, [], {}], ["a", 1, 1.0, None], strict=False)
    check({"type": "number", "not": {"type": "integer"}, "minimum": 1}, [1.5, 2.25], [2, 0.5, 1.0], strict=False)
    check({"oneOf": [{"const": 1}, {"type": "integer", "minimum": 1}]}, [2, 5], [1, 0, "a"])
    # strict=True closes the branches' objects: exclusivity is not enforced there (anyOf)
    schema = {
        "oneOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"type": "object", "properties": {"b": {"type": "integer"}}},
        ]
    }
    check(schema, [{"a": 1}, {"b": 1}, {}], [{"a": 1, "b": 2}])
    check(
        schema, [{"a": "x"}, {"a": 1, "b": "x"}], [{}, {"a": 1, "c": 1}, {"a": 1, "b": 2}], strict=False
    )  # open objects: {} and {"a": 1, "c": 1} match both branches
    check({"if": {"const": "x"}, "then": False}, ["y", 1], ["x"], strict=False)
    check({"type": "boolean", "not": {"const": True}}, [False], [True])


def test_pattern_syntax():
    cases = [
        ("^[^]$", ["x", "é"], ["", "xy"]),
        ("^a[]?b$", ["ab"], ["a b"]),
        ("^\\cJ\\x41\\u0042$", ["\nAB"], ["AB"]),
        ("^\\u{1F600}\\uD83D\\uDE00$", ["😀😀"], ["😀"]),
        ("^a{$", ["a{"], ["a"]),
        ("^a+?(?<n>b)$", ["aab"], ["b"]),
        ("^[\\d-z]$", ["5", "-", "z"], ["a"]),
        ("^.$", ["x", "é"], ["\n", "\u2028"]),
    ]
    for pattern, good, bad in cases:
        check({"type": "string", "pattern": pattern}, good, bad)


def test_several_patterns_or_formats():
    schema = {"allOf": [{"type": "string", "pattern": "^a"}, {"pattern": "b$"}]}
    raises(schema, "pattern", "several")
    check(schema, ["ab", "axb"], ["ba"], strict=False)  # strict=False keeps the first one (wider)


def test_shared_refs_are_not_recursion():
    schema = {
        "$defs": {"A": {"type": "integer"}, "B": {"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}}}},
        "type": "object",
        "properties": {"b": {"$ref": "#/$defs/B"}, "a": {"$ref": "#/$defs/A"}},
    }
    check(schema, [{"b": {"x": 1}, "a": 2}], [{"b": {"x": "1"}}])


def test_too_many_alternatives():
    def branch(i: int) -> dict:
        kinds = ("integer", "string", "null", "boolean")
        return {"anyOf": [{"properties": {f"p{i}": {"type": kind}}} for kind in kinds]}

    raises({"type": "object", "allOf": [branch(i) for i in range(5)]}, "alternatives")


def test_contrary_combinations_are_dropped_before_counting_alternatives():
    """4^5 combinations of types, of which only the four where every member agrees match anything."""
    branch = {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}, {"type": "boolean"}]}
    pattern = compile_schema({"allOf": [branch] * 5})
    assert all(accepts(pattern, v) for v in (1, "a", None, True)) and not accepts(pattern, 1.5)


def test_flexible_whitespace_in_constants_and_any_values():
    pattern = compile_schema({"const": {"a": [1, 2]}}, whitespace="flexible")
    assert accepts(pattern, {"a": [1, 2]}, indent=2) and accepts(pattern, {"a": [1, 2]}, separators=(",", ":"))
    pattern = compile_schema({"type": "object", "additionalProperties": True}, whitespace="flexible")
    assert accepts(pattern, {"x": {"y": [1]}}, indent=1)


def test_optional_property_subsets_exhaustively():
    import itertools

    for required in itertools.product([False, True], repeat=4):
        schema = {
            "type": "object",
            "properties": {f"p{i}": {"type": "integer"} for i in range(4)},
            "required": [f"p{i}" for i in range(4) if required[i]],
        }
        for strict in (True, False):
            pattern = re.compile(compile_schema(schema, strict=strict, whitespace="compact"))
            for mask in itertools.product([0, 1], repeat=4):
                value = {f"p{i}": i for i in range(4) if mask[i]}
                ok = all(mask[i] for i in range(4) if required[i])
                assert bool(pattern.fullmatch(json.dumps(value, separators=(",", ":")))) == ok
                if not strict:  # extra keys after the declared ones
                    assert bool(pattern.fullmatch(json.dumps({**value, "x": 1}, separators=(",", ":")))) == ok


def test_many_optional_properties_stay_linear():
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string", "maxLength": 20} for i in range(40)}}
    assert len(compile_schema(schema)) < 20000
