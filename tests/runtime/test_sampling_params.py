"""SamplingParams: defaults, normalisation, and one rejection test per field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from loomlm.runtime.sampling_params import SamplingParams


def test_defaults_match_sglang_names():
    p = SamplingParams()
    assert (p.max_new_tokens, p.min_new_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (128, 0, 1.0, 1.0, -1, 0.0)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.stop == () and p.stop_token_ids == () and p.seed is None and p.n == 1
    assert p.ignore_eos is False and p.skip_special_tokens is True
    assert not p.is_greedy


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "stop, expected",
    [
        (None, ()),
        ("###", ("###",)),
        (["a", "bc"], ("a", "bc")),
        (("x",), ("x",)),
        ([], ()),
    ],
)
def test_stop_is_normalised_to_tuple(stop, expected):
    assert SamplingParams(stop=stop).stop == expected


def test_stop_token_ids_normalised_and_ints_become_floats():
    p = SamplingParams(stop_token_ids=[5, 7], temperature=0, top_p=1)
    assert p.stop_token_ids == (5, 7)
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)


def test_is_greedy():
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy


def test_replace_revalidates():
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(SamplingParams(), top_p=0.0)


BAD_VALUES = [
    ("max_new_tokens", -1),
    ("max_new_tokens", 1.5),
    ("max_new_tokens", True),
    ("max_new_tokens", "8"),
    ("min_new_tokens", -1),
    ("min_new_tokens", False),
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", True),
    ("temperature", "1"),
    ("top_p", 0.0),
    ("top_p", 1.01),
    ("top_p", -0.5),
    ("top_p", math.nan),
    ("top_k", 0),
    ("top_k", -2),
    ("top_k", 2.0),
    ("top_k", True),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("min_p", math.inf),
    ("frequency_penalty", 2.5),
    ("frequency_penalty", -2.01),
    ("frequency_penalty", math.nan),
    ("presence_penalty", 3.0),
    ("presence_penalty", -3.0),
    ("presence_penalty", -math.inf),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.nan),
    ("stop", ""),
    ("stop", ["ok", ""]),
    ("stop", [1]),
    ("stop", 5),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [1.0]),
    ("stop_token_ids", [True]),
    ("stop_token_ids", 3),
    ("stop_token_ids", "12"),
    ("ignore_eos", 1),
    ("ignore_eos", "yes"),
    ("skip_special_tokens", 0),
    ("seed", 1.0),
    ("seed", True),
    ("seed", "42"),
    ("n", 0),
    ("n", -1),
    ("n", 2.0),
    ("n", True),
    ("regex", 5),
    ("regex", b"a+"),
    ("json_schema", 5),
    ("json_schema", "{nope"),
    ("json_schema", [1]),
    ("choices", "ab"),
    ("choices", [1]),
    ("choices", ("a", None)),
    ("ebnf", 5),
    ("ebnf", "  "),
    ("structural_tag", 5),
    ("structural_tag", "{nope"),
    ("structural_tag", [1]),
]


@pytest.mark.parametrize("field, value", BAD_VALUES)
def test_invalid_value_names_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value[-1] if isinstance(value, list) else value) in message  # the offending value


def test_every_field_has_a_rejection_test():
    tested = {field for field, _ in BAD_VALUES}
    assert tested == {f.name for f in dataclasses.fields(SamplingParams)}


def test_constraints_are_normalised_and_exclusive():
    assert SamplingParams(choices=["a", "b"]).choices == ("a", "b")
    assert SamplingParams(json_schema='{"type":  "integer"}').json_schema == '{"type": "integer"}'
    assert SamplingParams(json_schema={"type": "integer"}).json_schema == '{"type": "integer"}'
    assert SamplingParams(regex="a+").constrained and not SamplingParams().constrained
    p = SamplingParams(choices=["x"])
    assert SamplingParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="regex and json_schema cannot be combined"):
        SamplingParams(regex="a", json_schema={"type": "integer"})
    with pytest.raises(ValueError, match="choices"):
        SamplingParams(choices=[])


def test_min_new_tokens_must_not_exceed_max():
    with pytest.raises(ValueError, match="min_new_tokens.*5"):
        SamplingParams(max_new_tokens=4, min_new_tokens=5)
    assert SamplingParams(max_new_tokens=4, min_new_tokens=4).min_new_tokens == 4


def test_boundaries_accepted():
    SamplingParams(
        max_new_tokens=0,
        temperature=0,
        top_p=1.0,
        top_k=1,
        min_p=1.0,
        frequency_penalty=-2,
        presence_penalty=2,
        repetition_penalty=1e-3,
        seed=-7,
        n=4,
    )


def test_from_dict():
    p = SamplingParams.from_dict({"temperature": 0.5, "stop": "\n", "max_new_tokens": 3})
    assert p == SamplingParams(temperature=0.5, stop=("\n",), max_new_tokens=3)
    assert SamplingParams.from_dict(None) == SamplingParams()
    assert SamplingParams.from_dict(p) is p
    assert SamplingParams.from_dict(p.to_dict()) == p


def test_from_dict_rejects_unknown_key_by_name():
    with pytest.raises(ValueError, match="unknown sampling parameter 'temprature'.*'temperature'"):
        SamplingParams.from_dict({"temprature": 0.3})
    with pytest.raises(ValueError, match="unknown sampling parameter 'max_tokens'"):
        SamplingParams.from_dict({"max_tokens": 3})
    with pytest.raises(ValueError):
        SamplingParams.from_dict([("temperature", 1.0)])  # type: ignore[arg-type]


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams.from_dict({"top_k": 0})
