"""`$ref` resolution within one JSON-schema document.

`SchemaIndex(root)` walks the schema positions once, recording the base URI in effect at each one,
the resources (the root and every sub-schema with `$id`, keyed by absolute URI) and the `$anchor`s
(and `$dynamicAnchor`s, which act as plain anchors here). A `$ref` is resolved against the base URI
of the schema it appears in; its fragment is a JSON pointer into the resource or an anchor name.
References to other documents are never fetched: they raise GrammarError.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from loomlm.grammars.json_schema_keywords import Path, Sub, fail, pointer

ROOT_URI = "https://loomlm.invalid/schema.json"  # base URI of a root without $id
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SUBSCHEMAS = (
    "additionalProperties",
    "items",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentSchema",
)


def _join(base: str, ref: str) -> str:
    if not ref:
        return base
    return ref if urlsplit(ref).scheme else urljoin(base, ref)


class SchemaIndex:
    """Resources, anchors and base URIs of one schema document."""

    def __init__(self, root: Any) -> None:
        self.resources: dict[str, Sub] = {ROOT_URI: Sub(root, ())}  # absolute URI -> resource
        self.anchors: dict[tuple[str, str], Sub] = {}  # (resource URI, name) -> schema
        self.bases: dict[str, str] = {}  # JSON pointer -> base URI
        self._walk(root, (), ROOT_URI)

    def _walk(self, schema: Any, path: Path, base: str) -> None:
        if not isinstance(schema, dict):
            return
        if isinstance(schema.get("$id"), str):
            base = _join(base, schema["$id"].split("#")[0])
            self.resources.setdefault(base, Sub(schema, path))
        self.bases[pointer(path)] = base
        for key in ("$anchor", "$dynamicAnchor"):
            if isinstance(schema.get(key), str):
                self.anchors.setdefault((base, schema[key]), Sub(schema, path))
        for key, value in schema.items():
            if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    self._walk(sub, path + (key, name), base)
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                for i, sub in enumerate(value):
                    self._walk(sub, path + (key, i), base)
            elif key in _SUBSCHEMAS:
                self._walk(value, path + (key,), base)

    def resolve(self, ref: str, path: Path) -> Sub:
        """The schema `ref` (found in the schema at `path`) points to."""
        where = path
        while where and pointer(where) not in self.bases:
            where = where[:-1]
        uri_part, _, fragment = ref.partition("#")
        uri = _join(self.bases.get(pointer(where), ROOT_URI), uri_part)
        resource = self.resources.get(uri)
        if resource is None:
            raise fail("$ref", path, f"reference {ref!r} to another document ({uri}) is not supported")
        fragment = unquote(fragment)
        if fragment and not fragment.startswith("/"):
            if (uri, fragment) not in self.anchors:
                raise fail("$ref", path, f"unresolvable reference {ref!r}: no such $anchor")
            return self.anchors[(uri, fragment)]
        node, target = resource.schema, resource.path
        for token in fragment.split("/")[1:] if fragment else []:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise fail("$ref", path, f"unresolvable reference {ref!r}")
            target += (token,)
        return Sub(node, target)
