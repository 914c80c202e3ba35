"""Corpus documents in their schema's property order, for `python -m loomlm.bench grammar-corpus`.

Engines that emit properties in the schema's order (loomlm, XGrammar) can only accept a document
written in that order, so each document is re-keyed first (`order_keys`): declared keys in schema
order, the rest after them. The schemas that apply to a value come through `$ref`, `allOf`, the
`anyOf`/`oneOf` branch the value is valid under (jsonschema decides; a heuristic score when it cannot)
and the `then`/`else` its `if` selects.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any


def _deref(root: Any, ref: str) -> Any:
    """A local `$ref` ("#", "#/a/b"); None for anything else (anchors, other documents)."""
    if ref in ("#", ""):
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        part = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _json_type(doc: Any) -> str:
    if isinstance(doc, bool):
        return "boolean"
    if isinstance(doc, int) or (isinstance(doc, float) and doc.is_integer()):
        return "integer"
    return {dict: "object", list: "array", str: "string", float: "number"}.get(type(doc), "null")


_FLAT: dict[int, list[dict[str, Any]]] = {}  # a branch's schemas (all of its own branches); one order_keys call
_VALIDATOR: list[Any] = []  # [jsonschema validator of the root or None]; one order_keys call


def _validator(root: Any) -> Any:
    try:
        import jsonschema

        return jsonschema.validators.validator_for(root)(root)
    except Exception:  # no jsonschema, or a root it cannot read: the heuristic alone
        return None


def _fits(branch: Any, doc: Any) -> bool:
    """`doc` is valid under `branch` (resolved against the root), when jsonschema can tell."""
    validator = _VALIDATOR[0] if _VALIDATOR else None
    if validator is None:
        return False
    try:
        return bool(validator.evolve(schema=branch).is_valid(doc))
    except Exception:
        return False


def _score(branch: Any, doc: Any, root: Any) -> float:
    """How well `doc` fits one anyOf/oneOf branch: first whether jsonschema finds it valid there, then
    its type, declared keys, required keys, consts (nested branches are flattened for this part)."""
    if _fits(branch, doc):
        return 1e9
    schemas = _FLAT.get(id(branch)) or _FLAT.setdefault(id(branch), _expand([branch], root, doc, pick=False))
    types = {t for s in schemas for t in ([s["type"]] if isinstance(s.get("type"), str) else s.get("type") or [])}
    kind = _json_type(doc)
    if types and kind not in types and not (kind == "integer" and "number" in types):
        return -1e9
    if not isinstance(doc, dict):
        return 0.0
    score = 0.0
    for s in schemas:
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        for key, sub in props.items():
            if key in doc:
                score += 1
                if isinstance(sub, dict) and ("const" in sub or "enum" in sub):
                    ok = doc[key] == sub["const"] if "const" in sub else doc[key] in (sub["enum"] or [])
                    score += 5 if ok else -100
        required = s.get("required") if isinstance(s.get("required"), list) else []
        score -= 10 * sum(1 for key in required if key not in doc)
    return score


def _expand(schemas: list[Any], root: Any, doc: Any, pick: bool = True) -> list[dict[str, Any]]:
    """The schemas that apply to `doc`: through $ref, allOf, then/else and (with `pick`) the
    best-fitting anyOf/oneOf branch and the then or else that `if` selects."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()

    def visit(s: Any, depth: int) -> None:
        if not isinstance(s, dict) or id(s) in seen or depth > 40:
            return
        seen.add(id(s))
        out.append(s)
        if isinstance(s.get("$ref"), str):
            visit(_deref(root, s["$ref"]), depth + 1)
        for key in ("allOf", "anyOf", "oneOf"):
            branches = [b for b in s.get(key) or [] if isinstance(b, dict)] if isinstance(s.get(key), list) else []
            if key != "allOf" and branches:
                branches = [max(branches, key=lambda b: _score(b, doc, root))] if pick else branches
            for b in branches:
                visit(b, depth + 1)
        branches = ("then", "else")
        if pick and _VALIDATOR and _VALIDATOR[0] is not None and isinstance(s.get("if"), (dict, bool)):
            branches = ("then",) if _fits(s["if"], doc) else ("else",)
        for key in branches:
            visit(s.get(key), depth + 1)

    for s in schemas:
        visit(s, 0)
    return out


def _key_schemas(schemas: list[dict[str, Any]], key: str) -> list[Any]:
    declared = [
        s["properties"][key] for s in schemas if isinstance(s.get("properties"), dict) and key in s["properties"]
    ]
    for s in schemas:
        for pattern, sub in (
            (s.get("patternProperties") or {}).items() if isinstance(s.get("patternProperties"), dict) else ()
        ):
            try:
                if re.search(pattern, key):
                    declared.append(sub)
            except re.error:
                pass
    return declared or [s["additionalProperties"] for s in schemas if isinstance(s.get("additionalProperties"), dict)]


def _item_schemas(schemas: list[dict[str, Any]], i: int) -> list[Any]:
    out = []
    for s in schemas:
        items, prefix = s.get("items"), s.get("prefixItems")
        if isinstance(items, list):  # draft 4-2019 tuples
            out.append(items[i] if i < len(items) else s.get("additionalItems"))
        elif isinstance(prefix, list) and i < len(prefix):
            out.append(prefix[i])
        else:
            out.append(items)
    return [s for s in out if isinstance(s, dict)]


def order_keys(doc: Any, schema: Any, root: Any = None, depth: int = 0) -> Any:
    """`doc` with every object's keys in the schema's property order (best effort); keys no schema
    declares keep their order after the declared ones."""
    if root is None:
        root = schema
        _FLAT.clear()
        _VALIDATOR[:] = [_validator(root)]
    schemas = schema if isinstance(schema, list) else [schema]
    if depth > 200 or not isinstance(doc, (dict, list)):
        return doc
    applied = _expand(schemas, root, doc)
    if isinstance(doc, list):
        return [order_keys(v, _item_schemas(applied, i), root, depth + 1) for i, v in enumerate(doc)]
    position: dict[str, int] = {}
    for s in applied:
        for key in s.get("properties") or {} if isinstance(s.get("properties"), dict) else ():
            position.setdefault(key, len(position))
    keys = sorted(doc, key=lambda k: position.get(k, len(position)))  # stable: undeclared keep their order
    return {k: order_keys(doc[k], _key_schemas(applied, k), root, depth + 1) for k in keys}
