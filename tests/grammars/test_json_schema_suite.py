"""The official JSON Schema Test Suite (draft 2020-12) against `json_schema_to_regex(strict=False)`.

strict=False is the spec's semantics (open objects, unanchored patterns, 1.0 is an integer); strict=True
would close objects and reject many valid instances. A case is "supported" when its schema compiles
and every instance is classified right; json_schema_suite_expected.json records the status of every
case, and the test fails on any difference (a regression, or an improvement to record). Regenerate
the file with:

    .venv/bin/python tests/grammars/test_json_schema_suite.py

Each case's instances are classified by Python `re` on the compiled regex, and by the project's byte DFA.
No case is classified differently by the two, so the CI subset runs the DFA on every fourth case (the
DFA compile is most of the time) and `-m slow` runs it on all of them.

Instances are serialised with json.dumps, object keys reordered into schema order (declared
properties first, then required names, then dependentRequired names, then the rest), since the
regex fixes the key order.
"""

from __future__ import annotations

import json
import re
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.json_schema import json_schema_to_regex

SUITE = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "json-schema-test-suite" / "tests" / "draft2020-12"
)
EXPECTED = Path(__file__).with_name("json_schema_suite_expected.json")

try:
    from loomlm.grammars.limits import GrammarLimits
    from loomlm.grammars.regex_dfa import compile_dfa
except ImportError:  # pragma: no cover - the DFA compiler ships with the same issue
    compile_dfa = None
else:
    # Deterministic: a clock that never moves, so only the state limit can fail a compile (the expected
    # results must not depend on how fast or busy the machine is).
    _LIMITS = GrammarLimits(clock=lambda: 0.0)


@lru_cache(maxsize=8)
def _automaton(pattern: str):
    """The project's DFA for the pattern (GrammarError when too big), or a compiled Python regex."""
    return compile_dfa(pattern, _LIMITS) if compile_dfa is not None else re.compile(pattern)


def _matches(pattern: str, text: str) -> bool:
    """Whole-string membership: the project's byte DFA when available, else Python `re`."""
    automaton = _automaton(pattern)
    return automaton.matches(text) if compile_dfa is not None else automaton.fullmatch(text) is not None


def _resolve(schema: Any, root: Any) -> Any:
    """Follow local JSON-pointer $refs (best effort, for key ordering only)."""
    for _ in range(8):
        if not (isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/")):
            return schema
        node = root
        for token in schema["$ref"][2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            node = node.get(token) if isinstance(node, dict) else None
        if node is None:
            return schema
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}} if isinstance(node, dict) else node
    return schema


def _branches(schema: dict, root: Any) -> list:
    out = [_resolve(s, root) for key in ("allOf", "anyOf", "oneOf") for s in schema.get(key, [])]
    return [s for s in out if isinstance(s, dict)]


def _collect(schema: Any, root: Any, key: str, depth: int = 0) -> list:
    """Property names (key="properties") or required names in the order the compiler emits them."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 6:
        return []
    own = list(schema.get(key, {}) if key == "properties" else schema.get(key, []))
    return own + [n for s in _branches(schema, root) for n in _collect(s, root, key, depth + 1)]


def _sub(schema: Any, root: Any, name: str, depth: int = 0) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 6:
        return None
    if isinstance(schema.get("properties"), dict) and name in schema["properties"]:
        return schema["properties"][name]
    return next((s for b in _branches(schema, root) if (s := _sub(b, root, name, depth + 1)) is not None), None)


def order(data: Any, schema: Any, root: Any) -> Any:
    """`data` with object keys in schema order, recursively."""
    schema = _resolve(schema, root)
    if isinstance(data, dict):
        names = [
            *_collect(schema, root, "properties"),
            *_collect(schema, root, "required"),
            *[
                n
                for key, deps in (schema.get("dependentRequired", {}).items() if isinstance(schema, dict) else [])
                for n in [key, *deps]
            ],
        ]
        consts = [
            v
            for v in ([schema.get("const")] + list(schema.get("enum", [])) if isinstance(schema, dict) else [])
            if isinstance(v, dict) and v.keys() == data.keys()
        ]
        names = [*(consts[0] if consts else []), *names]
        keys = list(dict.fromkeys([n for n in names if n in data] + list(data)))
        return {k: order(data[k], _sub(schema, root, k), root) for k in keys}
    if isinstance(data, list) and isinstance(schema, dict):
        prefix = schema.get("prefixItems", schema["items"] if isinstance(schema.get("items"), list) else [])
        rest = schema.get("items") if not isinstance(schema.get("items"), list) else schema.get("additionalItems")
        return [order(v, prefix[i] if i < len(prefix) else rest, root) for i, v in enumerate(data)]
    return data


def run_case(case: dict, use_dfa: bool = True) -> tuple[str, int, str]:
    """(status, instances classified right, note) for one suite case. Python `re` screens the
    instances first (fast); a case it gets all right is then checked with `_matches` (if `use_dfa`)."""
    try:
        pattern = json_schema_to_regex(case["schema"], strict=False)
        screen = re.compile(pattern)
    except GrammarError as exc:
        return "unsupported", 0, str(exc)
    texts = [(json.dumps(order(t["data"], case["schema"], case["schema"])), t) for t in case["tests"]]
    oracles = [(lambda text: screen.fullmatch(text) is not None, "re")]
    if use_dfa:
        oracles.append((lambda text: _matches(pattern, text), "DFA"))
    for oracle, name in oracles:
        try:
            wrong = [t["description"] for text, t in texts if oracle(text) != t["valid"]]
        except GrammarError as exc:
            return "unsupported", 0, f"{name}: {exc}"
        if wrong:
            return "unsupported", 0, f"misclassified ({name}): " + "; ".join(wrong)
    return "supported", len(texts), ""


def run_suite(dfa_every: int = 1) -> tuple[dict[str, str], dict[str, str], int, int]:
    """status by case key, notes, instances right, instances in all; the DFA checks every `dfa_every`-th case."""
    statuses, notes, right, total = {}, {}, 0, 0
    for file in sorted(SUITE.glob("*.json")):
        for case in json.loads(file.read_text()):
            key = f"{file.name}::{case['description']}"
            while key in statuses:
                key += "#"
            statuses[key], got, notes[key] = run_case(case, use_dfa=len(statuses) % dfa_every == 0)
            right += got
            total += len(case["tests"])
    return statuses, notes, right, total


@pytest.mark.skipif(not SUITE.is_dir(), reason=f"JSON Schema Test Suite not found at {SUITE}")
@pytest.mark.parametrize(
    "dfa_every", [pytest.param(1, marks=pytest.mark.slow, id="dfa-all"), pytest.param(4, id="dfa-every-4th")]
)
def test_json_schema_test_suite(dfa_every: int):
    start = time.monotonic()
    statuses, notes, right, total = run_suite(dfa_every)
    expected = json.loads(EXPECTED.read_text())
    supported = sum(s == "supported" for s in statuses.values())
    print(
        f"\nJSON Schema Test Suite draft2020-12: {supported}/{len(statuses)} cases supported, "
        f"{right}/{total} instances right, {time.monotonic() - start:.1f} s"
    )
    changed = {k: (expected.get(k), s, notes[k]) for k, s in statuses.items() if expected.get(k) != s}
    stale = sorted(set(expected) - set(statuses))
    assert not changed and not stale, (
        f"suite status differs from {EXPECTED.name} (expected, got, note): {changed}; missing: {stale}. "
        f"If this is an improvement, regenerate: .venv/bin/python tests/grammars/{Path(__file__).name}"
    )


def main(argv: list[str] | None = None) -> int:
    statuses, notes, right, total = run_suite()
    EXPECTED.write_text(json.dumps(statuses, indent=1, sort_keys=True) + "\n")
    supported = sum(s == "supported" for s in statuses.values())
    print(f"wrote {EXPECTED}: {supported}/{len(statuses)} cases supported, {right}/{total} instances right")
    if argv and "-v" in argv:
        for key, note in notes.items():
            if note:
                print(f"{key}: {note[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
