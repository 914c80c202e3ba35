"""The complement of a normalized leaf, as leaves: what `not`, if/then/else and oneOf compile through.

`negate_leaf(leaf, types)` returns leaves whose union is every JSON value the leaf rejects:
the types it does not allow, plus, per allowed type, one leaf per keyword that breaks that keyword
(`minLength 3` -> `maxLength 2`, `required [a]` -> "a absent", `properties {a: S}` -> "a present
and not S", `enum [1, "a"]` -> numbers below or above 1, strings other than "a", ...). Keywords whose
complement is not a leaf (pattern, format, items, prefixItems, multipleOf, propertyNames, contains,
additionalProperties schemas, object or array enum values, an enum next to other keywords) raise
`Unnegatable`. Every leaf returned names its type, so strict-mode type inference does not apply to
it; none is marked `object_stated`, so strict mode leaves their objects open unless merged with a
schema about objects.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

from loomlm.grammars.json_schema_keywords import TYPES, Sub, json_equal

_FALSE = [Sub(False, ())]
_BY_TYPE = {
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("lower", "upper", "multipleOf"),
    "integer": ("lower", "upper", "multipleOf"),
    "array": ("prefixItems", "items", "minItems", "maxItems", "contains"),
    "object": ("properties", "required", "additionalProperties", "propertyNames", "minProperties", "maxProperties"),
}
_SWAP = {
    "minLength": "maxLength",
    "maxLength": "minLength",
    "minItems": "maxItems",
    "maxItems": "minItems",
    "minProperties": "maxProperties",
    "maxProperties": "minProperties",
}


class Unnegatable(Exception):
    """The leaf's complement is not expressible; the message names the keyword."""


class Negated(NamedTuple):
    """A schema standing for the complement of the conjunction of `subs`; the compiler expands it
    (eagerly, into `leaves`, where a failure must surface at once)."""

    subs: tuple
    leaves: Any = None


def contrary_required(leaf: dict) -> str | None:
    """Why an object leaf matches nothing through a required property's own schemas (None: not seen
    to): one of them is false, or they fix two different consts, or a const and its negation. A cheap
    test, so that products of conditions on one property's value (if/then/else over a discriminator
    such as `"kind": {"const": ...}`) drop contrary combinations before they multiply."""
    props = leaf.get("properties")
    for name in leaf.get("required", ()) if props else ():
        consts, negated = [], []
        for sub in props.get(name, ()):
            if isinstance(sub, Negated):
                if len(sub.subs) == 1 and _sole_const(sub.subs[0].schema):
                    negated.append(sub.subs[0].schema["const"])
                continue
            if sub.schema is False:
                return f"required property {name!r} is false"
            if isinstance(sub.schema, dict) and "const" in sub.schema:
                consts.append(sub.schema["const"])
        if consts and (
            any(not json_equal(consts[0], c) for c in consts[1:]) or any(json_equal(consts[0], c) for c in negated)
        ):
            return f"required property {name!r} must equal two different values"
    return None


def _sole_const(schema: Any) -> bool:
    return isinstance(schema, dict) and "const" in schema and not schema.keys() - {"const", "description", "title"}


def other_types(types: list[str]) -> list[dict]:
    """Leaves for the JSON values whose type is not among `types`."""
    out = [{"type": frozenset({t})} for t in TYPES if t not in types and t not in ("integer", "number")]
    if "number" not in types:
        out.append(
            {"type": frozenset({"number"})}
            if "integer" not in types
            else {"type": frozenset({"number"}), "not_types": frozenset({"integer"})}
        )
    return out


def negate_leaf(leaf: dict, types: list[str], closed_objects: bool = False) -> list[dict]:
    """Leaves whose union is the complement of `leaf`, whose allowed types are `types`. The leaf is
    read with the spec's semantics (no strict-mode type inference, open objects): in `not` and `if`
    it is a condition, not something to generate. With `closed_objects` (oneOf branches under
    strict=True, which describe output) an object the leaf leaves closed cannot be negated."""
    if closed_objects and "object" in types and leaf.get("object_stated") and "additionalProperties" not in leaf:
        raise Unnegatable("an object closed by strict=True")
    if "ignored" in leaf:
        raise Unnegatable(f"{leaf['ignored'][0]} (ignored by strict=False)")
    if "enum" in leaf:
        return other_types(types) + [part for kind in types for part in _not_values(kind, leaf)]
    out = other_types(types)
    if "number" in types and "integer" in leaf.get("not_types", ()):  # the leaf holds no integer
        out.append({"type": frozenset({"integer"})})
    for kind in types:
        if kind in ("null", "boolean"):
            continue
        if kind == "string" and leaf.get("not_enum"):  # strings other than these (a negated enum): these
            out.append({"type": frozenset({"string"}), "enum": list(leaf["not_enum"])})
        for key in _BY_TYPE[kind]:
            if key in leaf:
                out += [_typed(kind, part) for part in _break(key, leaf[key])]
    return out


def _not_values(kind: str, leaf: dict) -> list[dict]:
    """Leaves for the values of type `kind` outside the leaf's enum (scalars only)."""
    if leaf.keys() - {"enum", "type", "object_stated"}:
        raise Unnegatable("enum/const next to other keywords")
    values = [v for v in leaf["enum"] if _kind_of(v, kind)]
    typed = {"type": frozenset({kind})}
    if not values:
        return [typed]
    if kind in ("object", "array"):
        raise Unnegatable("an enum/const object or array")
    if kind == "boolean":
        return [{**typed, "enum": [b]} for b in (False, True) if b not in values]
    if kind == "string":
        return [{**typed, "not_enum": values}]
    if kind == "null":
        return []
    cuts = sorted({Decimal(repr(v)) if isinstance(v, float) else Decimal(v) for v in values})
    parts = [{**typed, "upper": (cuts[0], True)}, {**typed, "lower": (cuts[-1], True)}]
    return parts + [{**typed, "lower": (a, True), "upper": (b, True)} for a, b in zip(cuts, cuts[1:], strict=False)]


def _kind_of(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if isinstance(value, (int, float)):
        return kind == "number" or (kind == "integer" and float(value).is_integer())
    names = {type(None): "null", str: "string", list: "array", dict: "object"}
    return names.get(type(value)) == kind


def _typed(kind: str, leaf: dict) -> dict:
    return {"type": frozenset({kind}), **leaf}


def _break(key: str, value: Any) -> list[dict]:
    """Leaf parts (without type) for the values of one type that fail keyword `key`."""
    if key in _SWAP:
        if key.startswith("min"):
            return [{_SWAP[key]: value - 1}] if value > 0 else []
        return [{_SWAP[key]: value + 1}]
    if key in ("lower", "upper"):
        return [{"upper" if key == "lower" else "lower": (value[0], not value[1])}]
    if key == "required":
        return [{"properties": {name: _FALSE}} for name in value]
    if key == "properties":
        return [
            {"required": [name], "properties": {name: [Sub(Negated(tuple(subs)), ())]}} for name, subs in value.items()
        ]
    if key in ("additionalProperties", "items") and all(s.schema in (True, {}) for s in value):
        return []
    raise Unnegatable(key)
