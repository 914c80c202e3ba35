"""Keyword checking, normalisation and merging for the JSON-schema compiler (`json_schema`).

`normalize` turns one schema object into a flat "leaf" dict holding only what the type builders read
(composition keywords - `$ref`, `allOf`, `anyOf`, `oneOf`, `not`, if/then/else, `dependent*` - are
left to the caller):

    type: frozenset of type names   enum: list of JSON values (enum and const)
    properties: {name: [Sub]}   required: [name]   additionalProperties, propertyNames: [Sub]
    minProperties, maxProperties: int
    prefixItems: [[Sub]]   items: [Sub]   minItems, maxItems, minLength, maxLength: int
    contains: [((Sub, ...), minContains, maxContains or None)]
    not_types: frozenset, not_enum: [str] (both only from negation)
    lower, upper: (Decimal, exclusive)   multipleOf: [Decimal]   pattern, format: [(text, path)]
    unsat: reason the leaf matches nothing   ignored: keywords dropped by strict=False (a wider leaf)
    object_stated: the schema says something about objects (strict=True closes them)

A `[Sub]` list is the conjunction (allOf) of its schemas; [] means "anything". `merge` intersects two
leaves, which is how allOf, `$ref` siblings and anyOf/oneOf distribution are compiled.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, NamedTuple

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.json_formats import ANNOTATION_FORMATS, FORMATS

Path = tuple
TYPES = ("null", "boolean", "object", "array", "string", "number", "integer")
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "$defs",
        "definitions",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "$id",
        "discriminator",
        "xml",
        "externalDocs",
        "example",
    }
)
COMPOSITION = frozenset(
    {
        "$ref",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
    }
)  # expanded by the compiler, checked here
# Assertions the compiler cannot express: GrammarError when strict, ignored (a wider language) if not.
# So are the cases of other keywords the compiler cannot express (a `not` it cannot negate, a
# `multipleOf` other than 10**-k or a divisor of 1000 bounded by 0 at most, an unknown `format`, ...).
NARROWING = frozenset({"uniqueItems", "patternProperties", "unevaluatedProperties", "unevaluatedItems"})
# Keywords that change what other keywords mean: always GrammarError.
NEVER = frozenset({"$dynamicRef", "$recursiveRef", "$recursiveAnchor"})


class Sub(NamedTuple):
    """A sub-schema, its location (JSON pointer tokens from the document root) and the `$ref`
    targets being expanded around it (to detect recursion)."""

    schema: Any
    path: Path
    refs: frozenset = frozenset()


def pointer(path: Path) -> str:
    return "#" + "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in path)


def fail(keyword: str, path: Path, why: str) -> GrammarError:
    return GrammarError(f"{keyword} at {pointer(path)}: {why}")


def unsupported(keyword: str, path: Path, why: str = "not supported by the regex compiler") -> GrammarError:
    return fail(keyword, path, f"{why} (strict=False ignores keywords that only narrow the language)")


def sub_schema(value: Any, keyword: str, path: Path) -> Sub:
    if not isinstance(value, (dict, bool)):
        raise fail(keyword, path, f"expected a schema (object or boolean), got {value!r}")
    return Sub(value, path)


def _schema_list(value: Any, keyword: str, path: Path, nonempty: bool = True) -> list[Sub]:
    if not isinstance(value, list) or (nonempty and not value):
        raise fail(keyword, path, f"expected a {'non-empty ' if nonempty else ''}array of schemas, got {value!r}")
    return [sub_schema(v, keyword, path + (keyword, i)) for i, v in enumerate(value)]


def _count(value: Any, keyword: str, path: Path) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(keyword, path, f"expected a non-negative integer, got {value!r}")
    return value


def _number(value: Any, keyword: str, path: Path) -> Decimal:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise fail(keyword, path, f"expected a finite number, got {value!r}")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _types(value: Any, keyword: str, path: Path) -> frozenset:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or any(n not in TYPES for n in names):
        raise fail(keyword, path, f"expected one of {', '.join(TYPES)} or an array of them, got {value!r}")
    return frozenset(names)


def tighter(a: tuple, b: tuple, lower: bool) -> tuple:
    """The stricter of two (value, exclusive) bounds."""
    if a[0] != b[0]:
        return a if (a[0] > b[0]) == lower else b
    return a[0], a[1] or b[1]


def json_equal(x: Any, y: Any) -> bool:
    """JSON-schema equality: 1 == 1.0, true != 1, objects compare without key order."""
    if isinstance(x, bool) or isinstance(y, bool):
        return isinstance(x, bool) and isinstance(y, bool) and x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return x == y
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(json_equal(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(json_equal(x[k], y[k]) for k in x)
    return type(x) is type(y) and x == y


def normalize(schema: dict, path: Path, strict: bool, refs: frozenset = frozenset()) -> dict:
    """The leaf dict of one schema object (see the module docstring); raises GrammarError for
    malformed values and (when strict) for unsupported or unknown keywords (`x-...` extensions, as
    in OpenAPI, are annotations)."""
    leaf: dict = {}
    for key, value in schema.items():
        if key in NEVER:
            raise fail(key, path, "not supported by the regex compiler")
        if key in ANNOTATIONS or key in COMPOSITION or key in _HANDLED or key.startswith("x-"):
            continue
        if key in NARROWING and _no_op(key, value, schema):
            continue
        if strict:
            raise unsupported(key, path) if key in NARROWING else fail(key, path, "unknown keyword")
        if key in NARROWING:  # the leaf now matches more than the schema: it must not be negated
            leaf.setdefault("ignored", []).append(key)
            if key == "uniqueItems":
                leaf["unique"] = True  # kept where the items are a few constants (json_schema._array)
    _check_composition(schema, path)
    _type_keywords(schema, path, leaf)
    _object_keywords(schema, path, leaf)
    _array_keywords(schema, path, leaf)
    _scalar_keywords(schema, path, leaf, strict)
    if "object" in leaf.get("type", ()) or _OBJECT_KEYWORDS & schema.keys():
        leaf["object_stated"] = True  # strict=True closes such objects (without additionalProperties)
    if refs:
        _attach(leaf, refs)
    return leaf


def _attach(leaf: dict, refs: frozenset) -> None:
    """Mark the leaf's sub-schemas with the `$ref`s being expanded around them."""
    if "properties" in leaf:
        leaf["properties"] = {k: [s._replace(refs=refs) for s in v] for k, v in leaf["properties"].items()}
    if "prefixItems" in leaf:
        leaf["prefixItems"] = [[s._replace(refs=refs) for s in v] for v in leaf["prefixItems"]]
    for key in ("additionalProperties", "items", "propertyNames"):
        if key in leaf:
            leaf[key] = [s._replace(refs=refs) for s in leaf[key]]
    if "patternProperties" in leaf:
        leaf["patternProperties"] = [(p, s._replace(refs=refs)) for p, s in leaf["patternProperties"]]
    if "contains" in leaf:
        leaf["contains"] = [(tuple(s._replace(refs=refs) for s in subs), lo, hi) for subs, lo, hi in leaf["contains"]]


def _no_op(key: str, value: Any, schema: dict) -> bool:
    """Narrowing keywords in a form that narrows nothing."""
    return (
        (key == "uniqueItems" and value is False)
        or (key == "patternProperties" and value == {})
        or (key in ("unevaluatedProperties", "unevaluatedItems") and value in (True, {}))
    )


_OBJECT_KEYWORDS = frozenset(
    {
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
    }
)
_HANDLED = frozenset(
    {
        "type",
        "nullable",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "format",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
    }
)


def _check_composition(schema: dict, path: Path) -> None:
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            _schema_list(schema[key], key, path)
    if "$ref" in schema and not isinstance(schema["$ref"], str):
        raise fail("$ref", path, f"expected a string, got {schema['$ref']!r}")
    for key in ("not", "if", "then", "else"):
        if key in schema:
            sub_schema(schema[key], key, path)
    for key in ("dependentRequired", "dependentSchemas", "dependencies"):
        value = schema.get(key, {})
        if not isinstance(value, dict) or not all(_dependency_ok(key, v) for v in value.values()):
            raise fail(key, path, f"expected an object of name lists or schemas, got {value!r}")


def _dependency_ok(key: str, value: Any) -> bool:
    names = isinstance(value, list) and all(isinstance(n, str) for n in value)
    schema = isinstance(value, (dict, bool))
    return names if key == "dependentRequired" else schema if key == "dependentSchemas" else names or schema


def _type_keywords(schema: dict, path: Path, leaf: dict) -> None:
    if "type" in schema:
        leaf["type"] = _types(schema["type"], "type", path)
        if schema.get("nullable") is True:
            leaf["type"] = leaf["type"] | {"null"}
    if "nullable" in schema and not isinstance(schema["nullable"], bool):
        raise fail("nullable", path, f"expected a boolean, got {schema['nullable']!r}")
    if "enum" in schema:
        if not isinstance(schema["enum"], list):
            raise fail("enum", path, f"expected an array, got {schema['enum']!r}")
        leaf["enum"] = list(schema["enum"])
        if not leaf["enum"]:
            leaf["unsat"] = f"enum at {pointer(path)} is empty"
    if "const" in schema:
        leaf["enum"] = [v for v in leaf.get("enum", [schema["const"]]) if json_equal(v, schema["const"])]
        if not leaf["enum"]:
            leaf["unsat"] = f"const at {pointer(path)} is not among the enum values"


def _object_keywords(schema: dict, path: Path, leaf: dict) -> None:
    if "properties" in schema:
        props = schema["properties"]
        if not isinstance(props, dict):
            raise fail("properties", path, f"expected an object, got {props!r}")
        leaf["properties"] = {
            name: [sub_schema(v, "properties", path + ("properties", name))] for name, v in props.items()
        }
    if "required" in schema:
        req = schema["required"]
        if not isinstance(req, list) or any(not isinstance(n, str) for n in req):
            raise fail("required", path, f"expected an array of strings, got {req!r}")
        leaf["required"] = list(dict.fromkeys(req))
    if "additionalProperties" in schema:
        leaf["additionalProperties"] = [
            sub_schema(schema["additionalProperties"], "additionalProperties", path + ("additionalProperties",))
        ]
    patterns = schema.get("patternProperties", {})
    if not isinstance(patterns, dict):
        raise fail("patternProperties", path, f"expected an object, got {patterns!r}")
    if patterns:  # strict=False only (NARROWING): a wider language, see json_schema._object
        leaf["patternProperties"] = [
            (p, sub_schema(v, "patternProperties", path + ("patternProperties", p))) for p, v in patterns.items()
        ]
    if schema.get("propertyNames", True) not in (True, {}):
        leaf["propertyNames"] = [sub_schema(schema["propertyNames"], "propertyNames", path + ("propertyNames",))]
    for key in ("minProperties", "maxProperties"):
        if key in schema:
            leaf[key] = _count(schema[key], key, path)


def _array_keywords(schema: dict, path: Path, leaf: dict) -> None:
    items = schema.get("items")
    if "prefixItems" in schema:
        if isinstance(items, list):
            raise fail("items", path, "an array form of items cannot be combined with prefixItems")
        leaf["prefixItems"] = [[s] for s in _schema_list(schema["prefixItems"], "prefixItems", path, False)]
    if isinstance(items, list):  # draft 4-2019 tuple form; additionalItems governs the rest
        leaf["prefixItems"] = [[s] for s in _schema_list(items, "items", path, False)]
        if "additionalItems" in schema:
            leaf["items"] = [sub_schema(schema["additionalItems"], "additionalItems", path + ("additionalItems",))]
    elif "items" in schema:
        leaf["items"] = [sub_schema(items, "items", path + ("items",))]
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        if key in schema:
            leaf[key] = _count(schema[key], key, path)
    if "contains" in schema:
        low = _count(schema.get("minContains", 1), "minContains", path)
        high = _count(schema["maxContains"], "maxContains", path) if "maxContains" in schema else None
        leaf["contains"] = [((sub_schema(schema["contains"], "contains", path + ("contains",)),), low, high)]


def _scalar_keywords(schema: dict, path: Path, leaf: dict, strict: bool) -> None:
    for key, lower in (("minimum", True), ("maximum", False)):
        if key not in schema:
            continue
        side = "exclusiveM" + key[1:]
        bound = (_number(schema[key], key, path), schema.get(side) is True)
        _bound(leaf, bound, lower)
    for key, lower in (("exclusiveMinimum", True), ("exclusiveMaximum", False)):
        value = schema.get(key)
        if isinstance(value, bool):
            if value and ("m" + key[10:]) not in schema:
                raise fail(key, path, f"the boolean form needs {'m' + key[10:]}")
        elif key in schema:
            _bound(leaf, (_number(value, key, path), True), lower)
    if "multipleOf" in schema:
        step = _number(schema["multipleOf"], "multipleOf", path)
        if step <= 0:
            raise fail("multipleOf", path, f"expected a number > 0, got {schema['multipleOf']!r}")
        leaf["multipleOf"] = [step]
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise fail("pattern", path, f"expected a string, got {schema['pattern']!r}")
        leaf["pattern"] = [(schema["pattern"], path)]
    if "format" in schema:
        name = schema["format"]
        if not isinstance(name, str):
            raise fail("format", path, f"expected a string, got {name!r}")
        if name in FORMATS:
            leaf["format"] = [(name, path)]
        elif strict and name not in ANNOTATION_FORMATS:
            raise unsupported("format", path, f"format {name!r} is not supported (known: {', '.join(FORMATS)})")


def _bound(leaf: dict, bound: tuple, lower: bool) -> None:
    key = "lower" if lower else "upper"
    leaf[key] = tighter(leaf[key], bound, lower) if key in leaf else bound


def merge(a: dict, b: dict) -> dict:
    """The leaf matching what both leaves match."""
    out = dict(a)
    for key, value in b.items():
        if key in ("properties", "prefixItems"):
            continue
        if key not in out:
            out[key] = value
        elif key == "type":
            out[key] = _type_and(out[key], value)
            if not out[key]:
                out["unsat"] = f"the types {sorted(a[key])} and {sorted(value)} have nothing in common"
        elif key in ("not_types",):
            out[key] = out[key] | value
        elif key in ("object_stated", "unique"):
            pass
        elif key == "enum":
            out[key] = [v for v in out[key] if any(json_equal(v, w) for w in value)]
            if not out[key]:
                out["unsat"] = "the enum/const values of an allOf have nothing in common"
        elif key in ("minItems", "minLength", "minProperties"):
            out[key] = max(out[key], value)
        elif key in ("maxItems", "maxLength", "maxProperties"):
            out[key] = min(out[key], value)
        elif key in ("lower", "upper"):
            out[key] = tighter(out[key], value, key == "lower")
        elif key != "unsat":  # lists: required, additionalProperties, propertyNames, items, multipleOf, ...
            out[key] = out[key] + [v for v in value if v not in out[key]]
    for key, side in (("properties", _property_side), ("prefixItems", _item_side)):
        if key in a or key in b:
            names = (
                list(dict.fromkeys([*a.get(key, {}), *b.get(key, {})]))
                if key == "properties"
                else range(max(len(a.get(key, [])), len(b.get(key, []))))
            )
            merged = {n: side(a, n) + side(b, n) for n in names}
            out[key] = merged if key == "properties" else list(merged.values())
    return out


def _type_and(a: frozenset, b: frozenset) -> frozenset:
    both = a & b
    if ("number" in a and "integer" in b) or ("integer" in a and "number" in b):
        both |= {"integer"}
    return both


def _property_side(leaf: dict, name: str) -> list:
    return leaf["properties"][name] if name in leaf.get("properties", {}) else leaf.get("additionalProperties", [])


def _item_side(leaf: dict, index: int) -> list:
    prefix = leaf.get("prefixItems", [])
    return prefix[index] if index < len(prefix) else leaf.get("items", [])
