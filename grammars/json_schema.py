"""JSON schema -> regex: `json_schema_to_regex(schema, *, whitespace="default", strict=True)`.

The regex matches JSON texts (one value, no surrounding whitespace) that the schema accepts, written
in the dialect common to Python `re` and interegular (no anchors, lookarounds or backreferences).
docs/structured-output.md has the keyword table; the main rules:

* Objects: declared `properties` appear in schema order, optional ones may be left out; keys not
  declared come after them and never repeat a declared name. `strict=True` closes objects whose
  `additionalProperties` is absent (like XGrammar and OpenAI structured outputs: `{"type": "object"}`
  is `{}` only); `strict=False` follows the spec (absent = any extra keys with any value).
* Any JSON value (`{}`, `true`, open objects, untyped arrays) is bounded to ANY_VALUE_DEPTH levels of
  nested arrays/objects: nesting without bound is not regular.
* Without `type`, a schema accepts every type, each narrowed by its own keywords (spec semantics);
  `strict=True` instead infers the type when the keywords present belong to exactly one type.
* Applicators are compiled by merging schemas into alternatives (a disjunctive normal form):
  `allOf`, `$ref` next to other keywords, `anyOf`, `dependentRequired`/`dependentSchemas`. `not`,
  if/then/else and `oneOf`'s "exactly one" need complements, built by `json_negation` where a
  complement is expressible; otherwise `not`/`if` are unsupported (strict) or ignored, and `oneOf`
  falls back to `anyOf` (a value matching two branches is then accepted). Conditions (`not`, `if`)
  are negated with the spec's open objects; oneOf branches that strict=True closes are not negated.
* `strict=True` raises GrammarError for keywords the compiler cannot express; `strict=False` ignores
  those that only narrow the language (the regex then accepts a superset), and unknown keywords.
  With `strict=False`, `pattern` is a search as in the spec (`"a+"` matches `"xaay"`); with
  `strict=True` it describes the whole string (as Outlines does), anchored or not.
* integer: `strict=False` also accepts `1.0` (the spec's integer); `strict=True` only `-?(0|[1-9]...)`.
* Unsatisfiable parts (a `false` schema, min > max, an empty enum) drop out of the language; if
  nothing is left the call raises GrammarError with the reason.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Grammar, Part, Ref, Term, alt, seq
from loomlm.grammars.json_negation import Negated, Unnegatable, contrary_required, negate_leaf, other_types
from loomlm.grammars.json_refs import SchemaIndex
from loomlm.grammars.json_scalars import number_regex, string_regex
from loomlm.grammars.json_schema_keywords import (
    TYPES,
    Path,
    Sub,
    fail,
    json_equal,
    merge,
    normalize,
    pointer,
    unsupported,
)
from loomlm.grammars.json_shapes import (
    COMPACT,
    Style,
    any_array,
    any_object,
    any_value,
    any_value_rules,
    array_regex,
    object_regex,
    repeat,
    unique_array,
    value_regex,
    whitespace_style,
)
from loomlm.grammars.json_strings import DUMPS_STRING, key_not_in, literal_string, plain_names

ANY_VALUE_DEPTH = 2  # nesting levels of arrays/objects inside "any JSON value"
MAX_ALTERNATIVES = 256  # most alternatives one schema may expand into (anyOf x allOf products)
_MAX_UNIQUE = 8  # uniqueItems over at most this many constants is a rule per subset of them (2**8)
_FAMILIES = {
    "object": {"properties", "required", "additionalProperties", "propertyNames", "minProperties", "maxProperties"},
    "array": {"prefixItems", "items", "minItems", "maxItems", "contains"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"lower", "upper", "multipleOf"},
}
Leaf = tuple[dict, Path]


@dataclass
class _Ctx:
    strict: bool
    style: Style
    index: SchemaIndex
    reasons: list = field(default_factory=list)  # why parts of the schema match nothing
    grammar: bool = False  # build a grammar (scalars as terminals, recursion as rules), not one regex
    rules: dict = field(default_factory=dict)  # grammar mode: rule name -> Part
    pending: dict = field(default_factory=dict)  # grammar mode: recursive $ref key -> its target Sub
    shared: dict = field(default_factory=dict)  # grammar mode: _compile results by sub-schema identity
    # every regex goes to the grammar engine's lexer, also in regex_mode() (which keeps this): patterns
    # may keep their lookaheads, which the byte-DFA path cannot read
    lexed: bool = False

    def unsat(self, reason: str) -> None:
        self.reasons.append(reason)
        return None

    def any_value(self) -> Part:
        if not self.grammar:
            return any_value(self.style, ANY_VALUE_DEPTH)
        if not self.rules.keys() & {"$json_value"}:
            self.rules.update(any_value_rules(self.style))
        return Ref("$json_value")

    def any_array(self) -> Part:
        return any_array(self.style, ANY_VALUE_DEPTH) if not self.grammar else self._any("$json_array")

    def any_object(self) -> Part:
        return any_object(self.style, ANY_VALUE_DEPTH) if not self.grammar else self._any("$json_object")

    def _any(self, name: str) -> Part:
        self.any_value()
        return Ref(name)

    def terminal(self, regex: str | None, name: str = "") -> Part | None:
        """A scalar's regex: itself in regex mode, one terminal in grammar mode."""
        if self.grammar and isinstance(regex, str) and regex:
            return Term(regex, name=name, nonempty=True)  # every JSON value is at least one character
        return regex

    def regex_mode(self) -> _Ctx:
        return replace(self, grammar=False, reasons=[])


def json_schema_to_regex(schema: Any, *, whitespace: str = "default", strict: bool = True) -> str:
    """Regex for the JSON texts valid under `schema` (a dict, a bool, JSON text, or a pydantic model
    class); raises GrammarError for invalid, unsupported or unsatisfiable schemas. `whitespace` is
    "default", "compact", "flexible" or a regex (see `json_shapes.whitespace_style`)."""
    root = _load(schema)
    ctx = _Ctx(bool(strict), whitespace_style(whitespace), SchemaIndex(root))
    regex = _compile([Sub(root, ())], ctx)
    if regex is None:
        why = ctx.reasons[-1] if ctx.reasons else "no alternative is left"
        raise GrammarError(f"the schema is unsatisfiable (matches no JSON value): {why}")
    return regex


def json_schema_to_grammar(schema: Any, *, whitespace: str = "default", strict: bool = True) -> Grammar:
    """The schema as a `Grammar`: the same language as `json_schema_to_regex`, except that `$ref`
    cycles become recursive rules and "any JSON value" nests without bound (the spec's semantics)."""
    root = _load(schema)
    ctx = _Ctx(bool(strict), whitespace_style(whitespace), SchemaIndex(root), grammar=True, lexed=True)
    top = _compile([Sub(root, ())], ctx)
    if top is None:
        why = ctx.reasons[-1] if ctx.reasons else "no alternative is left"
        raise GrammarError(f"the schema is unsatisfiable (matches no JSON value): {why}")
    rules: dict[str, Any] = {"$root": top}
    while ctx.pending:
        key, target = ctx.pending.popitem()
        if key in ctx.rules:
            continue
        ctx.rules[key] = None  # placeholder while its body is compiled (it may refer to itself)
        body = _compile([Sub(target.schema, target.path, frozenset({key}))], ctx)
        if body is None:
            raise GrammarError(f"the schema at {key} (reached through a recursive $ref) matches no JSON value")
        ctx.rules[key] = body
    rules.update(ctx.rules)
    return Grammar({name: _expr(part) for name, part in rules.items()}, "$root", check_refs=False)


def _expr(part: Part):
    return Term(part) if isinstance(part, str) else part


def _load(schema: Any) -> Any:
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    elif isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise GrammarError(f"invalid JSON schema text: {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    return schema


def _compile(subs: list[Sub], ctx: _Ctx) -> Part | None:
    """Regex for the conjunction of `subs`; None when it matches nothing. In grammar mode the result
    is shared by every compile of the same sub-schema objects (a definition reached through many
    `$ref`s is built once, not once per path to it: nested references would multiply otherwise)."""
    if not ctx.grammar:
        return _regex_of(_leaves(subs, ctx), ctx)
    key = tuple((id(s.schema), s.refs) for s in subs)
    got = ctx.shared.get(key)
    if got is None:
        got = ctx.shared[key] = (subs, _regex_of(_leaves(subs, ctx), ctx))  # subs kept: ids stay unique
    return got[1]


def _regex_of(leaves: list[Leaf], ctx: _Ctx) -> Part | None:
    parts = [p for leaf, path in leaves if (p := _leaf_regex(leaf, path, ctx)) is not None]
    return alt(parts) if parts else None


def _leaves(subs: list[Sub], ctx: _Ctx) -> list[Leaf]:
    return _product([_expand(s, ctx) for s in subs], ctx)


def _expand(sub: Sub, ctx: _Ctx) -> list[Leaf]:
    """The schema as alternatives of merged leaves (a disjunctive normal form of its applicators)."""
    schema, path, refs = sub
    if isinstance(schema, Negated):
        return list(schema.leaves) if schema.leaves is not None else _negate(_leaves(list(schema.subs), ctx), path, ctx)
    if schema is True or schema is False:
        return [({}, path)] if schema else ctx.unsat(f"false schema at {pointer(path)}") or []
    if not isinstance(schema, dict):
        raise fail("schema", path, f"expected an object or a boolean, got {schema!r}")
    factors = [[(normalize(schema, path, ctx.strict, refs), path)]]
    if "$ref" in schema:
        target = ctx.index.resolve(schema["$ref"], path)
        key = pointer(target.path)
        if key in refs and ctx.grammar:
            ctx.pending.setdefault(key, target) if key not in ctx.rules else None
            factors.append([({"rule": key}, path)])
        elif key in refs:
            raise fail(
                "$ref",
                path,
                f"recursive $ref {schema['$ref']!r} is not supported by the regex compiler (it needs a grammar)",
            )
        else:
            factors.append(_expand(Sub(target.schema, target.path, refs | {key}), ctx))
    for i, s in enumerate(schema.get("allOf", [])):
        factors.append(_expand(Sub(s, path + ("allOf", i), refs), ctx))
    branches = {
        key: [_expand(Sub(s, path + (key, i), refs), ctx) for i, s in enumerate(schema.get(key, []))]
        for key in ("anyOf", "oneOf")
    }
    if "anyOf" in schema:
        factors.append([leaf for branch in branches["anyOf"] for leaf in branch])
    if "oneOf" in schema:
        factors.append(_one_of(branches["oneOf"], path, ctx))
    if "not" in schema:
        inner = Sub(schema["not"], path + ("not",), refs)
        factors.append(_negation(lambda: _negate(_expand(inner, ctx), path, ctx), "not", path, ctx))
    if "if" in schema and ("then" in schema or "else" in schema):
        factors.append(_negation(lambda: _conditional(schema, path, refs, ctx), "if", path, ctx))
    factors += _dependencies(schema, path, refs, ctx)
    return _product(factors, ctx)


def _negate(alternatives: list[Leaf], path: Path, ctx: _Ctx, closed: bool = False) -> list[Leaf]:
    """Leaves for the complement of a union of leaves (raises Unnegatable); `closed`: see negate_leaf."""
    factors = []
    for leaf, where in alternatives:
        if "rule" in leaf:
            raise Unnegatable("a recursive $ref")
        parts = negate_leaf(leaf, _leaf_types(leaf, ctx, infer=False), closed)
        for part in parts:  # "a present and not S": expand not-S now, so that Unnegatable shows here
            for name, subs in part.get("properties", {}).items():
                part["properties"][name] = [
                    s
                    if not isinstance(s.schema, Negated)
                    else Sub(
                        s.schema._replace(leaves=_negate(_leaves(list(s.schema.subs), ctx), where, ctx, closed)), where
                    )
                    for s in subs
                ]
        factors.append([(part, where) for part in parts])
    return _product(factors, ctx, path)


def _negation(build: Callable[[], list[Leaf]], keyword: str, path: Path, ctx: _Ctx) -> list[Leaf]:
    """build(), or (strict=False) no constraint when it needs a complement the compiler lacks."""
    try:
        leaves = build()
    except (Unnegatable, _TooMany) as exc:
        if ctx.strict:
            raise unsupported(keyword, path, f"needs a complement the regex compiler cannot build: {exc}") from None
        return [({"ignored": [keyword]}, path)]
    return leaves or ctx.unsat(f"{keyword} at {pointer(path)} leaves nothing") or []


def _conditional(schema: dict, path: Path, refs: frozenset, ctx: _Ctx) -> list[Leaf]:
    """if/then/else as (then and if) or (else and not if): the branch first, so that its properties
    keep their declared order (an `if` usually tests one of them)."""
    cond = _expand(Sub(schema["if"], path + ("if",), refs), ctx)
    then, other = (_expand(Sub(schema.get(k, True), path + (k,), refs), ctx) for k in ("then", "else"))
    return _product([then, cond], ctx) + _product([other, _negate(cond, path, ctx)], ctx)


def _one_of(branches: list[list[Leaf]], path: Path, ctx: _Ctx) -> list[Leaf]:
    """Each branch without the others when their complements are expressible, else (as anyOf) their
    union: then an instance matching several branches is accepted."""
    try:
        negated = [_negate(branch, path, ctx, closed=ctx.strict) for branch in branches]
        return (
            [
                leaf
                for i, branch in enumerate(branches)
                for leaf in _product([branch, *negated[:i], *negated[i + 1 :]], ctx, path)
            ]
            or ctx.unsat(f"no value matches exactly one branch of oneOf at {pointer(path)}")
            or []
        )
    except (Unnegatable, _TooMany):  # a superset of oneOf: marked so that it is never negated
        return [
            ({**leaf, "ignored": [*leaf.get("ignored", []), "oneOf"]}, where)
            for branch in branches
            for leaf, where in branch
        ]


def _dependencies(schema: dict, path: Path, refs: frozenset, ctx: _Ctx) -> list[list[Leaf]]:
    """dependentRequired/dependentSchemas (and draft-7 dependencies), one factor per name: a value
    that is not an object, or an object without the name, or one meeting the dependency."""
    factors = []
    for key in ("dependencies", "dependentRequired", "dependentSchemas"):
        for name, need in schema.get(key, {}).items():
            where = path + (key, name)
            object_type = frozenset({"object"})
            alts = [(leaf, path) for leaf in other_types(["object"])]
            alts.append(({"type": object_type, "properties": {name: [Sub(False, where)]}}, path))
            present = ({"type": object_type, "required": [name, *need] if isinstance(need, list) else [name]}, path)
            if isinstance(need, list):
                alts.append(present)
            else:
                alts += _product([[present], _expand(Sub(need, where, refs), ctx)], ctx)
            factors.append(alts)
    return factors


class _TooMany(GrammarError):
    pass


def _product(factors: list[list[Leaf]], ctx: _Ctx, path: Path = ()) -> list[Leaf]:
    """The merged leaves of every combination of one alternative per factor."""
    if not factors:
        return [({}, path)]
    if math.prod(len(f) for f in factors) > MAX_ALTERNATIVES:
        pruned = _pruned_product(factors, ctx)
        if pruned is not None:
            return pruned
        if ctx.strict:
            raise _TooMany(
                f"the schema expands into more than {MAX_ALTERNATIVES} alternatives "
                "(anyOf/oneOf/not/if combined through allOf); simplify it"
            )
        factors = _widened(factors, path)
    out = []
    for combo in itertools.product(*factors):
        rules = [lf for lf, _ in combo if "rule" in lf]
        if rules:  # a recursive $ref stays a rule: nothing else may narrow it
            if len(rules) > 1 or any(lf.keys() - {"ignored", "object_stated"} for lf, _ in combo if "rule" not in lf):
                if ctx.strict:
                    raise unsupported("$ref", combo[0][1], "a recursive $ref next to other constraints")
                # strict=False: the rule alone, a wider language (marked: it must not be negated)
                rules = [{**rules[0], "ignored": [*rules[0].get("ignored", []), "$ref siblings"]}]
            out.append((rules[0], combo[0][1]))
            continue
        leaf, path = combo[0]
        for other, _ in combo[1:]:
            leaf = merge(leaf, other)
        if "unsat" not in leaf and len(combo) > 1 and (why := contrary_required(leaf)):
            leaf["unsat"] = why
        if "unsat" in leaf:
            ctx.unsat(leaf["unsat"])
        else:
            out.append((leaf, path))
    return out


def _pruned_product(factors: list[list[Leaf]], ctx: _Ctx) -> list[Leaf] | None:
    """The product built one factor at a time, combinations that match nothing (the `then` of one
    `if` against the `else` of a contrary one, say) dropped as they appear: None if more than
    MAX_ALTERNATIVES survive a step anyway. Recursive rules are kept apart as in `_product`."""
    partial = [(leaf, where, []) for leaf, where in factors[0] if "rule" not in leaf]
    partial += [({}, where, [leaf]) for leaf, where in factors[0] if "rule" in leaf]
    for factor in factors[1:]:
        grown = []
        for merged, where, rules in partial:
            for leaf, _ in factor:
                if "rule" in leaf:
                    grown.append((merged, where, [*rules, leaf]))
                    continue
                both = merge(merged, leaf)
                if "unsat" not in both and (why := contrary_required(both)):
                    both["unsat"] = why
                if "unsat" in both:
                    ctx.unsat(both["unsat"])
                else:
                    grown.append((both, where, rules))
        if len(grown) > MAX_ALTERNATIVES:
            return None
        partial = grown
    out = []
    for merged, where, rules in partial:
        if rules and (len(rules) > 1 or merged.keys() - {"ignored", "object_stated"}):
            if ctx.strict:
                raise unsupported("$ref", where, "a recursive $ref next to other constraints")
            rules = [{**rules[0], "ignored": [*rules[0].get("ignored", []), "$ref siblings"]}]
        out.append((rules[0], where) if rules else (merged, where))
    return out


def _widened(factors: list[list[Leaf]], path: Path) -> list[list[Leaf]]:
    """strict=False past MAX_ALTERNATIVES: the largest factors (allOf members with many alternatives)
    become "anything" until the product fits; a wider language, marked so that it is never negated."""
    factors = list(factors)
    for i in sorted(range(len(factors)), key=lambda k: -len(factors[k])):
        if math.prod(len(f) for f in factors) <= MAX_ALTERNATIVES:
            break
        factors[i] = [({"ignored": ["allOf member with too many alternatives"]}, path)]
    return factors


def _leaf_types(leaf: dict, ctx: _Ctx, infer: bool = True) -> list[str]:
    types = set(leaf.get("type", TYPES))
    if "type" not in leaf and ctx.strict and infer and "enum" not in leaf:
        families = {name for name, keys in _FAMILIES.items() if keys & leaf.keys()}
        types = families if len(families) == 1 else types
    types -= leaf.get("not_types", set())
    return [t for t in TYPES if t in types and not (t == "integer" and "number" in types)]


def _leaf_regex(leaf: dict, path: Path, ctx: _Ctx) -> Part | None:
    if "rule" in leaf:
        return Ref(leaf["rule"])
    if not leaf.keys() - {"ignored", "object_stated"}:
        return ctx.any_value()
    types = _leaf_types(leaf, ctx)
    if "enum" in leaf:
        return ctx.terminal(_enum(leaf, types, path, ctx), "enum")
    builders = {
        "null": lambda *_: "null",
        "boolean": lambda *_: "(?:true|false)",
        "object": _object,
        "array": _array,
        "string": string_regex,
        "number": number_regex,
        "integer": number_regex,
    }
    parts = [ctx.terminal(r, t) for t in types if (r := builders[t](leaf, path, ctx, t)) is not None]
    if not types:
        ctx.unsat(f"no type is left at {pointer(path)}")
    return alt(parts) if parts else None


def _object(leaf: dict, path: Path, ctx: _Ctx, _type: str) -> Part | None:
    props, required = leaf.get("properties", {}), leaf.get("required", [])
    extra_schema = leaf.get("additionalProperties")
    closed = ctx.strict and leaf.get("object_stated", False)  # strict closes objects the schema is about
    # patternProperties constrain an open object on the grammar path only (the regex path leaves them out)
    narrowing = _FAMILIES["object"] | ({"patternProperties"} if ctx.grammar else set())
    if extra_schema is None and not closed and not narrowing & leaf.keys():
        return ctx.any_object()
    if extra_schema is None:
        extra_value = None if closed else ctx.any_value()
    else:
        extra_value = _compile(extra_schema, ctx)
    names = _property_names(leaf, path, ctx)
    colon, members = ctx.style.colon, []
    patterns = leaf.get("patternProperties", [])
    for name, subs in props.items():
        value = _compile(subs + _matching(patterns, name), ctx)
        if value is not None and names is not None and not _name_ok(name, names):
            value = ctx.unsat(f"property {name!r} at {pointer(path)} breaks propertyNames")
        if value is None:
            if name in required:
                return ctx.unsat(f"required property {name!r} at {pointer(path)} can never be satisfied")
            continue
        members.append((seq(literal_string(name) + colon, value), name in required))
    missing = [name for name in required if name not in props]
    for name in [n for n in missing if _matching(patterns, n)]:
        value = _compile(_matching(patterns, name), ctx)  # keys a pattern finds are not "additional"
        if value is None:
            return ctx.unsat(f"required property {name!r} at {pointer(path)} can never be satisfied")
        members.append((seq(literal_string(name) + colon, value), True))
        missing.remove(name)
    if missing and (extra_value is None or (names is not None and not all(_name_ok(n, names) for n in missing))):
        why = (
            "additionalProperties or propertyNames forbid it"
            if extra_schema is not None or names
            else "objects are closed by strict=True (declare it in properties, or set additionalProperties)"
        )
        return ctx.unsat(f"required property {missing[0]!r} at {pointer(path)} is not allowed: {why}")
    members += [(seq(literal_string(name) + colon, extra_value), True) for name in missing]
    key = None if extra_value is None else _extra_key([*props, *missing], names, path, ctx)
    # The regex path leaves patternProperties keys out (as before the grammar engine): their members
    # multiply the byte DFA's states (the JSON Schema Test Suite's regex run took 50% longer).
    by_pattern, pattern_keys = _pattern_members(patterns, path, ctx) if ctx.grammar else ([], None)
    if key is not None and pattern_keys:
        key = _matching_none(key, pattern_keys)
    extras = [*by_pattern, *([] if key is None else [seq(key, colon, extra_value)])]
    extra = alt(extras) if extras else None
    count = _property_count(leaf, members, extra, path, ctx)
    return None if count is None else object_regex(members, extra, ctx.style, count)


def _matching(patterns: list[tuple[str, Sub]], name: str) -> list[Sub]:
    """The patternProperties sub-schemas whose (unanchored) pattern finds `name`."""
    out = []
    for pattern, sub in patterns:
        try:
            if re.search(pattern, name):
                out.append(sub)
        except re.error:  # an ECMA-only construct: the member stays as properties declares it
            pass
    return out


def _pattern_members(patterns: list[tuple[str, Sub]], path: Path, ctx: _Ctx) -> tuple[list[Part], list[str] | None]:
    """One `"key":value` alternative per patternProperties entry (strict=False only: a key matching two
    patterns may take either value), and the content regexes of the keys the patterns match (None when
    one of them cannot be read: additionalProperties then still admits any undeclared key)."""
    out, keys = [], []
    for pattern, sub in patterns:
        key_ctx = ctx.regex_mode()
        try:
            key = _regex_of(_leaves([Sub({"type": "string", "pattern": pattern}, sub.path)], key_ctx), key_ctx)
        except GrammarError:  # a pattern the compiler cannot read: any key (wider, as strict=False is)
            key, keys = key_not_in([]), None
        if key is not None and keys is not None:
            keys.append(key[1:-1])  # '"content"' -> content
        value = _compile([sub], ctx)
        if value is not None and key is not None:
            out.append(seq(key + ctx.style.colon, value))
    return out, keys


def _matching_none(key: Part, contents: list[str]) -> Part:
    """An undeclared key that no patternProperties pattern matches (those keys take the pattern's
    value, not additionalProperties'): a negative lookahead after the opening quote over the patterns'
    contents and the closing quote. Left as is where that cannot be written (a pattern that has a
    lookahead of its own, a key that is an alternation of names)."""
    if any("(?=" in c or "(?!" in c for c in contents):
        return key
    look = f'(?!(?:{"|".join(contents)})")'
    if isinstance(key, Term) and key.regex.startswith('"'):
        return replace(key, regex='"' + look + key.regex[1:])
    if isinstance(key, str) and key.startswith('"'):
        return '"' + look + key[1:]
    return key


def _property_names(leaf: dict, path: Path, ctx: _Ctx) -> tuple[str | None, list | None] | None:
    """propertyNames as (regex of the quoted key or None for no key, the names when it is an enum)."""
    if not leaf.get("propertyNames"):
        return None
    ctx = ctx.regex_mode()  # key names stay regexes: they are matched with `re` here
    leaves = _leaves([*leaf["propertyNames"], Sub({"type": "string"}, path)], ctx)
    regex = _regex_of(leaves, ctx)
    if regex is None or not all("enum" in lf for lf, _ in leaves):
        return regex, None
    matcher = re.compile(regex)
    names = [v for lf, _ in leaves for v in lf["enum"] if isinstance(v, str) and matcher.fullmatch(json.dumps(v))]
    return regex, list(dict.fromkeys(names))


def _name_ok(name: str, names: tuple[str | None, list | None]) -> bool:
    return names[0] is not None and re.fullmatch(names[0], json.dumps(name)) is not None


def _extra_key(declared: list[str], names: tuple | None, path: Path, ctx: _Ctx) -> Part | None:
    """A key that is not declared (and meets propertyNames); None when there is none. In grammar mode
    a key among plain names is one terminal, a json.dumps string without the names' spellings, which
    the lexer derives as it reads (no regex of every way to leave the names' trie is written)."""
    if names is None:
        if ctx.grammar and declared and plain_names(declared):
            return Term(DUMPS_STRING, name="key", exclude=tuple(f'"{n}"' for n in dict.fromkeys(declared)))
        return key_not_in(declared)
    regex, literals = names
    if regex is None:
        return None
    if literals is not None:
        keep = [literal_string(n) for n in literals if n not in declared]
        return alt(keep) if keep else None
    if not declared:
        return regex
    if ctx.strict:
        raise unsupported("propertyNames", path, "propertyNames other than an enum cannot be combined with properties")
    return key_not_in(declared)


def _property_count(leaf: dict, members: list, extra: str | None, path: Path, ctx: _Ctx) -> tuple | None:
    """minProperties/maxProperties as bounds on the number of extra members; None if unsatisfiable."""
    lo, hi = leaf.get("minProperties", 0), leaf.get("maxProperties")
    needed = sum(req for _, req in members)
    most = None if extra else len(members)
    if (hi is not None and hi < needed) or (most is not None and most < lo):
        return ctx.unsat(f"minProperties/maxProperties at {pointer(path)} cannot be met")
    if lo <= needed and (hi is None or (most is not None and most <= hi)):
        return 0, None
    if needed == len(members):
        return max(0, lo - needed), None if hi is None else hi - needed
    if ctx.strict:
        raise unsupported(
            "minProperties" if lo > needed else "maxProperties",
            path,
            "only supported when every declared property is required",
        )
    return 0, None


def _array(leaf: dict, path: Path, ctx: _Ctx, _type: str) -> Part | None:
    if not _FAMILIES["array"] & leaf.keys():
        return ctx.any_array()
    contains = [c for c in leaf.get("contains", []) if c[1:] != (0, None)]  # minContains 0: no constraint
    if contains:
        regex = _array_contains(leaf, contains, path, ctx)
        if regex != "":
            return regex
    lo, hi = leaf.get("minItems", 0), leaf.get("maxItems")
    if leaf.get("unique") and ctx.grammar and "items" in leaf and "prefixItems" not in leaf:
        values = _finite_values(leaf["items"], ctx)
        if values is not None and len(values) <= _MAX_UNIQUE:
            if lo > min(len(values), lo if hi is None else hi):
                return ctx.unsat(f"minItems {lo} at {pointer(path)}: only {len(values)} distinct items exist")
            parts = [ctx.terminal(value_regex(v, ctx.style), "enum") for v in values]
            return unique_array(parts, lo, hi, ctx.style, ctx.rules, f"$unique{len(ctx.rules)}")
    prefix = [_compile(subs, ctx) for subs in leaf.get("prefixItems", [])]
    item = ctx.any_value() if "items" not in leaf else _compile(leaf["items"], ctx)
    if None in prefix:
        prefix, item = prefix[: prefix.index(None)], None
    if item is None:
        hi = len(prefix) if hi is None else min(hi, len(prefix))
    if hi is not None and lo > hi:
        return ctx.unsat(f"minItems {lo} cannot be met at {pointer(path)} (maxItems or item schemas allow {hi})")
    return array_regex(prefix[:hi] if hi is not None else prefix, item, lo, hi, ctx.style)


def _finite_values(items: list[Sub], ctx: _Ctx) -> list | None:
    """The distinct scalar values an item may be, when the item schema allows only constants (an
    enum, booleans, null); None otherwise."""
    values: list = []
    for item, _ in _leaves(items, ctx):
        rest = item.keys() - {"type", "not_types", "ignored", "object_stated"}
        types = _leaf_types(item, ctx, infer=False)
        if rest == {"enum"}:
            found = [
                v for v in item["enum"] if _json_type(v) in types or (_json_type(v) == "integer" and "number" in types)
            ]
            if any(isinstance(v, (list, dict)) for v in found):
                return None
        elif not rest and set(types) <= {"boolean", "null"}:
            found = [*([True, False] if "boolean" in types else []), *([None] if "null" in types else [])]
        else:
            return None
        for v in found:
            if not any(json_equal(v, w) for w in values):
                values.append(v)
    return values


def _array_contains(leaf: dict, contains: list, path: Path, ctx: _Ctx) -> Part | None:
    """An array with minContains..maxContains items matching `contains` (and all matching `items`);
    "" (strict=False) to ignore a contains the compiler cannot express."""
    (subs, low, high), lo = contains[0], leaf.get("minItems", 0)
    try:
        if len(contains) > 1 or "prefixItems" in leaf or "maxItems" in leaf or lo > max(low, 1 if high is None else 0):
            raise Unnegatable("contains with prefixItems, maxItems or another contains")
        items = leaf.get("items", [])
        hit = _compile([*items, *subs], ctx)
        if high is None:
            miss = _compile(items, ctx) if items else ctx.any_value()
        else:
            miss = _compile([*items, Sub(Negated(tuple(subs)), path)], ctx)
    except Unnegatable as exc:
        if ctx.strict:
            raise unsupported("contains", path, f"not supported here ({exc})") from None
        return ""
    style, parts = ctx.style, []
    has_miss = miss is not None and miss != ""
    run = repeat(seq(style.comma, miss), 0, None) if has_miss else ""
    if hit is not None and (high is None or high >= max(low, 1)):
        lead = repeat(seq(miss, style.comma), 0, None) if has_miss else ""
        more = repeat(seq(run, style.comma, hit), max(low, 1) - 1, None if high is None else high - 1)
        parts.append(style.wrap("[", seq(lead, hit, more, run), "]"))
    if low == 0:
        parts += ([style.wrap("[", seq(miss, run), "]")] if has_miss else []) + [style.wrap("[", "", "]")]
    return alt(parts) if parts else ctx.unsat(f"contains at {pointer(path)} cannot be met")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float) and value.is_integer():
        return "integer"
    kinds = {type(None): "null", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "?")


def _enum(leaf: dict, types: list[str], path: Path, ctx: _Ctx) -> str | None:
    """The enum/const values that also satisfy the rest of the leaf."""
    strange = [v for v in leaf["enum"] if _json_type(v) == "?"]
    if strange:
        raise fail("enum", path, f"{strange[0]!r} is not a JSON value")
    integers = "number" in types and "integer" not in leaf.get("not_types", ())
    values = [v for v in leaf["enum"] if _json_type(v) in types or (_json_type(v) == "integer" and integers)]
    rest = {k: v for k, v in leaf.items() if k not in ("enum", "type", "not_types", "ignored", "object_stated")}
    if rest and values:
        check = _leaf_regex({**rest, "type": frozenset(types)}, path, replace(ctx.regex_mode(), style=COMPACT))
        matcher = re.compile(check) if check is not None else None
        values = [v for v in values if matcher and matcher.fullmatch(_compact_dump(v, rest))]
    if not values:
        return ctx.unsat(f"no enum/const value at {pointer(path)} satisfies the other keywords")
    try:
        return alt([value_regex(v, ctx.style) for v in values])
    except (TypeError, ValueError) as exc:
        raise fail("enum", path, str(exc)) from None


def _compact_dump(value: Any, leaf: dict) -> str:
    if isinstance(value, dict):  # declared properties first, as the object regex expects
        order = [*leaf.get("properties", {}), *leaf.get("required", [])]
        value = {k: value[k] for k in [*[n for n in order if n in value], *value]}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
