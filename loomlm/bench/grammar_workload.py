"""The workload of `python -m loomlm.bench grammar`: JSON schemas and regexes, each with one valid example.

Each case's `example` is the text a trajectory walks (tokenized with the model's tokenizer, then EOS).
JSON examples are `json.dumps(instance)`, i.e. `", "` and `": "` separators, which every library's
default compact JSON grammar accepts. String lengths stay unbounded (a bounded length costs one
automaton state per character position and measures that, not the library).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON_SCHEMA = "json_schema"
REGEX = "regex"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # JSON_SCHEMA or REGEX
    spec: Any  # the schema (dict) or the regex (str)
    instance: Any  # a valid JSON value (schemas) or the example string (regexes)

    @property
    def spec_text(self) -> str:
        """What a library compiles: the schema as JSON text, or the regex."""
        return json.dumps(self.spec) if self.kind == JSON_SCHEMA else self.spec

    @property
    def example(self) -> str:
        return json.dumps(self.instance) if self.kind == JSON_SCHEMA else self.instance


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required}


SCHEMAS: list[Case] = [
    Case(
        "flat object",
        JSON_SCHEMA,
        _obj({"name": {"type": "string"}, "age": {"type": "integer"}, "active": {"type": "boolean"}}),
        {"name": "Ada Lovelace", "age": 36, "active": True},
    ),
    Case(
        "nested object",
        JSON_SCHEMA,
        _obj(
            {
                "name": {"type": "string"},
                "address": _obj(
                    {
                        "street": {"type": "string"},
                        "city": {"type": "string"},
                        "zip": {"type": "string", "pattern": "[0-9]{5}"},
                    }
                ),
                "employer": _obj({"company": {"type": "string"}, "since": {"type": "integer"}}),
            }
        ),
        {
            "name": "Grace Hopper",
            "address": {"street": "12 Navy Yard", "city": "Arlington", "zip": "22202"},
            "employer": {"company": "US Navy", "since": 1943},
        },
    ),
    Case(
        "array of objects",
        JSON_SCHEMA,
        _obj(
            {
                "order_id": {"type": "integer"},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": _obj(
                        {
                            "sku": {"type": "string", "pattern": "[A-Z]{1,3}-[0-9]{1,5}"},
                            "quantity": {"type": "integer"},
                            "price": {"type": "number"},
                        }
                    ),
                },
            }
        ),
        {
            "order_id": 1042,
            "items": [{"sku": "A-100", "quantity": 2, "price": 9.99}, {"sku": "B-7", "quantity": 1, "price": 120.5}],
        },
    ),
    Case(
        "enums",
        JSON_SCHEMA,
        _obj(
            {
                "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
                "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                "level": {"enum": [1, 2, 3]},
                "kind": {"const": "ticket"},
            }
        ),
        {"status": "shipped", "priority": "high", "level": 2, "kind": "ticket"},
    ),
    Case(
        "string formats",
        JSON_SCHEMA,
        _obj(
            {
                "birthday": {"type": "string", "format": "date"},
                "created": {"type": "string", "format": "date-time"},
                "email": {"type": "string", "format": "email"},
                "id": {"type": "string", "format": "uuid"},
            }
        ),
        {
            "birthday": "1990-07-14",
            "created": "2024-05-01T12:30:00Z",
            "email": "ada@example.com",
            "id": "123e4567-e89b-12d3-a456-426614174000",
        },
    ),
    Case(
        "ipv4 format",
        JSON_SCHEMA,
        _obj(
            {"host": {"type": "string", "format": "ipv4"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535}}
        ),
        {"host": "192.168.1.20", "port": 8080},
    ),
    Case(
        "optional properties",
        JSON_SCHEMA,
        _obj(
            {
                "id": {"type": "integer"},
                "nickname": {"type": "string"},
                "email": {"type": "string"},
                "verified": {"type": "boolean"},
            },
            required=["id"],
        ),
        {"id": 7, "email": "x@example.org"},
    ),
    Case(
        "number bounds",
        JSON_SCHEMA,
        _obj(
            {
                "count": {"type": "integer", "minimum": 0, "maximum": 100},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                "temperature": {"type": "number"},
            }
        ),
        {"count": 42, "ratio": 0.25, "year": 1999, "temperature": -3.5},
    ),
    Case(
        "anyOf",
        JSON_SCHEMA,
        _obj(
            {
                "value": {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
                "tags": {"type": "array", "items": {"type": "string"}},
            }
        ),
        {"value": "forty-two", "tags": ["a", "bc"]},
    ),
]

_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"

REGEXES: list[Case] = [
    Case("phone", REGEX, r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", "(555) 123-4567"),
    # Outlines-core 0.2.14's index drops the continuations of `(\.[a-z0-9-]+)*` once `\.[a-z]{2,6}` has
    # matched (it rejects "a@b.example.com" after "a@b.ex"), so the example keeps to one dot after "@".
    Case("email-ish", REGEX, r"[a-z0-9._]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,6}", "jane.doe@example.com"),
    Case("ipv4-ish", REGEX, rf"({_OCTET}\.){{3}}{_OCTET}", "192.168.10.254"),
    Case("date", REGEX, r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", "2024-02-29"),
]


def select(schemas: int | None = None, regexes: int | None = None) -> list[Case]:
    """The first `schemas` JSON schemas and `regexes` regexes (None: all of them)."""
    return SCHEMAS[:schemas] + REGEXES[:regexes]
