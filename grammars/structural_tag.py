"""Structural tags: free text in which tagged sections (tool calls, reasoning) follow their own grammar.

Two spellings, both as a JSON object (the `structural_tag` sampling parameter):

1. SGLang's (XGrammar's first format): `{"type": "structural_tag", "structures": [{"begin":
   "<tool_call>", "schema": {...}, "end": "</tool_call>"}, ...], "triggers": ["<tool_call>"]}`: any
   text; where a trigger appears, one of the structures whose `begin` starts with it follows (its JSON
   constrained by `schema`), then free text again.
2. Composable formats (XGrammar's second format): `{"type": "structural_tag", "format": F}` where F is
   `{"type": "const_string", "value"}`, `{"type": "json_schema", "json_schema"}`, `{"type":
   "any_text"}`, `{"type": "sequence", "elements": [F...]}`, `{"type": "or", "elements": [F...]}`,
   `{"type": "tag", "begin", "content": F, "end"}` or `{"type": "triggered_tags", "triggers",
   "tags": [tag...], "at_least_one": false, "stop_after_first": false}`. A constraint that starts only
   after the reasoning is `sequence[tag("<think>", any_text, "</think>"), ...]`.

Free text is one `FreeText` terminal that cannot contain a trigger (or, inside a tag, its end), so a
trigger is never free text and the grammar is unambiguous where it matters.
"""

from __future__ import annotations

import json
from typing import Any

from loomlm.grammars.cfg_guide import CFGGuide, compile_cfg
from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Expr, FreeText, Grammar, Rep, Seq, Term, alt, renamed, rep, seq
from loomlm.grammars.json_schema import json_schema_to_grammar
from loomlm.grammars.json_strings import escape_literal
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.vocabulary import Vocabulary


def structural_tag_grammar(spec: Any, whitespace: str = "default") -> Grammar:
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise GrammarError(f"structural_tag is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise GrammarError(f"structural_tag must be a JSON object, got {type(spec).__name__}")
    builder = _Builder(whitespace)
    if "format" in spec:
        top = builder.format(spec["format"], "format")
    elif "structures" in spec:
        top = builder.legacy(spec)
    else:
        raise GrammarError('structural_tag needs "structures" and "triggers", or "format"')
    builder.rules["$tagged"] = top
    return Grammar(builder.rules, "$tagged")


def compile_structural_tag(
    spec: Any, vocab: Vocabulary, limits: GrammarLimits | None = None, whitespace: str = "default"
) -> CFGGuide:
    return compile_cfg(structural_tag_grammar(spec, whitespace), vocab, limits, "structural tag")


def _literal(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise GrammarError(f"structural_tag {where} must be a string, got {text!r}")
    return escape_literal(text)


class _Builder:
    def __init__(self, whitespace: str):
        self.whitespace = whitespace
        self.rules: dict[str, Expr] = {}
        self.count = 0

    def schema(self, schema: Any, where: str) -> Expr:
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"structural_tag {where} must be a JSON schema object, got {schema!r}")
        try:
            g = json_schema_to_grammar(schema, whitespace=self.whitespace, strict=True)
        except GrammarError as exc:
            raise GrammarError(f"structural_tag {where}: {exc}") from None
        prefix = f"s{self.count}:"
        self.count += 1
        for name, expr in g.rules.items():
            self.rules[prefix + name] = renamed(expr, prefix)
        return renamed(g.rules[g.start], prefix)

    def legacy(self, spec: dict) -> Expr:
        structures, triggers = spec.get("structures"), spec.get("triggers")
        if not isinstance(structures, list) or not structures:
            raise GrammarError("structural_tag structures must be a non-empty list")
        if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
            raise GrammarError("structural_tag triggers must be a non-empty list of non-empty strings")
        tags = []
        for i, s in enumerate(structures):
            if not isinstance(s, dict):
                raise GrammarError(f"structural_tag structures[{i}] must be an object")
            begin = s.get("begin")
            if not isinstance(begin, str) or not any(begin.startswith(t) for t in triggers):
                raise GrammarError(f"structural_tag structures[{i}].begin {begin!r} starts with no trigger")
            tags.append(
                seq(
                    _literal(begin, f"structures[{i}].begin"),
                    self.schema(s.get("schema", True), f"structures[{i}].schema"),
                    _literal(s.get("end"), f"structures[{i}].end"),
                )
            )
        return self.triggered(tuple(triggers), tags, at_least_one=False, stop_after_first=False)

    def triggered(self, triggers: tuple[str, ...], tags: list, at_least_one: bool, stop_after_first: bool) -> Expr:
        text = rep(FreeText(triggers), 0, 1)
        call = alt(tags)
        if stop_after_first:
            body = seq(text, call, text) if at_least_one else alt([text, seq(text, call, text)])
        else:
            more = rep(seq(call, text), 1 if at_least_one else 0, None)
            body = seq(text, more)
        return body if not isinstance(body, str) else Term(body)

    def format(self, f: Any, where: str) -> Expr:
        if not isinstance(f, dict) or not isinstance(f.get("type"), str):
            raise GrammarError(f"structural_tag {where} must be an object with a string 'type'")
        kind = f["type"]
        if kind == "const_string":
            value = _literal(f.get("value"), f"{where}.value")
            return Term(value) if value else Seq(())
        if kind == "json_schema":
            return self.schema(f.get("json_schema"), f"{where}.json_schema")
        if kind == "any_text":
            return Rep(FreeText(()), 0, 1)
        if kind in ("sequence", "or"):
            elements = f.get("elements")
            if not isinstance(elements, list) or not elements:
                raise GrammarError(f"structural_tag {where}.elements must be a non-empty list")
            parts = [self.format(e, f"{where}.elements[{i}]") for i, e in enumerate(elements)]
            return Seq(tuple(parts)) if kind == "sequence" else alt(parts)
        if kind == "tag":
            return self.tag(f, where)
        if kind == "triggered_tags":
            triggers = f.get("triggers")
            if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
                raise GrammarError(f"structural_tag {where}.triggers must be a non-empty list of strings")
            raw_tags = f.get("tags")
            if not isinstance(raw_tags, list) or not raw_tags:
                raise GrammarError(f"structural_tag {where}.tags must be a non-empty list")
            tags = [self.tag(t, f"{where}.tags[{i}]") for i, t in enumerate(raw_tags)]
            for i, t in enumerate(raw_tags):
                if not any(str(t.get("begin", "")).startswith(trig) for trig in triggers):
                    raise GrammarError(f"structural_tag {where}.tags[{i}].begin starts with no trigger")
            return self.triggered(
                tuple(triggers), tags, bool(f.get("at_least_one", False)), bool(f.get("stop_after_first", False))
            )
        raise GrammarError(f"structural_tag {where}: unknown format type {kind!r}")

    def tag(self, f: Any, where: str) -> Expr:
        if not isinstance(f, dict):
            raise GrammarError(f"structural_tag {where} must be an object")
        begin, end = f.get("begin"), f.get("end")
        content = f.get("content", {"type": "any_text"})
        if isinstance(content, dict) and content.get("type") == "any_text":
            body: Expr = Rep(FreeText((end,) if isinstance(end, str) and end else ()), 0, 1)
        else:
            body = self.format(content, f"{where}.content")
        return seq(_literal(begin, f"{where}.begin"), body, _literal(end, f"{where}.end"))
