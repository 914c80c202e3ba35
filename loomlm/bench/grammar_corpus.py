"""`python -m loomlm.bench grammar-corpus`: loomlm, XGrammar and llguidance on real-world schemas and EBNF.

In one run, on the default model's tokenizer:
- the SchemaStore corpus (`../shared/data/schemastore/`, 537 schemas with valid and invalid documents;
  spec semantics, loomlm `strict=False`) and five lark-dialect EBNF grammars (`EBNF_CASES`; XGrammar
  reads a hand translation to its GBNF dialect, the same language);
- coverage: the share of schemas whose compile + first mask finishes within `--budget` seconds (an
  error, an overrun or a crash is not covered; hangs are killed by a watchdog and counted);
- valid accepted / invalid rejected: each document (of covered schemas), keys reordered into the
  schema's property order (`order_keys`) and serialized with `json.dumps(doc, ensure_ascii=False)`, is
  tokenized and walked token by token; it is accepted when no token is refused and EOS is allowed at
  the end;
- time to first mask p50 / p90 (ms): compile + first mask, cold, over covered schemas (and over the
  schemas every library covered); the per-tokenizer set-up is measured apart;
- mask p50 / p99 (us): every mask of every valid document walked (lazy work included), each one call
  filling a preallocated int32 bitmask.
Every library runs in its own worker process (`grammar_corpus_peers`). With `--json` the last stdout
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np
import torch

from loomlm.bench.ebnf_cases import CASES, EbnfCase
from loomlm.bench.grammar_corpus_docs import order_keys
from loomlm.bench.grammar_corpus_peers import LIBRARIES, Worker
from loomlm.bench.report import environment, text_table

CORPUS = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "schemastore"
LABELS = {"loomlm": "loomlm", "xgrammar": "XGrammar", "llguidance": "llguidance"}


EBNF_CASES = CASES  # lark grammars with their GBNF translations (XGrammar reads those)


# ---- the corpus and the run ------------------------------------------------------------------------------


def load_corpus(path: pathlib.Path, limit: int | None = None) -> list[dict[str, Any]]:
    files = sorted(p for p in path.glob("*.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in files[:limit]]


def _serialize(doc: Any, schema: Any) -> str:
    return json.dumps(order_keys(doc, schema), ensure_ascii=False)


def run_corpus(
    entries: list[dict[str, Any]],
    cases: tuple[EbnfCase, ...] | list[EbnfCase],
    names: list[str],
    tokenizer: Any,
    *,
    budget: float = 10.0,
    doc_budget: float = 60.0,
    grace: float = 5.0,
    memory_gb: float = 8.0,
    log: Any = None,
) -> dict[str, Any]:
    """Every library on every schema and EBNF case, interleaved (one worker busy at a time); the summary."""
    log = log or (lambda message: None)
    eos, vocab_size = int(tokenizer.eos_token_id), len(tokenizer)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    tasks = []
    for e in entries:
        docs = {k: [encode(_serialize(d, e["schema"])) for d in e[k]] for k in ("valid", "invalid")}
        tasks.append({"kind": "json", "name": e["name"], "schema": e["schema"], **docs})
    for c in cases:
        docs = {"valid": [encode(t) for t in c.valid], "invalid": [encode(t) for t in c.invalid]}
        tasks.append({"kind": "ebnf", "name": c.name, "lark": c.grammar, "gbnf": c.gbnf, **docs})
    with tempfile.TemporaryDirectory(prefix="bench-grammar-corpus-") as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)  # the workers load it from here (no pickles)
        log(f"{len(tasks)} tasks tokenized; starting workers: {', '.join(names)}")
        workers, missing = {}, {}
        for n in names:
            try:
                workers[n] = Worker(n, tokenizer_dir, vocab_size, eos, memory_gb, grace)
            except RuntimeError as exc:  # a peer that is not installed or does not start: reported, not fatal
                if n == "loomlm":
                    raise
                missing[n] = str(exc).strip().splitlines()[-1][:200]
                log(f"{n} left out: {missing[n]}")
        names = list(workers)
        results: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
        start = time.perf_counter()
        try:
            for i, task in enumerate(tasks):
                task.update(budget=budget, doc_budget=doc_budget)
                for n in names:
                    results[n][f"{task['kind']}:{task['name']}"] = _annotate(workers[n].run(task), task, tokenizer)
                if (i + 1) % 10 == 0 or i + 1 == len(tasks):
                    log(f"{i + 1}/{len(tasks)} tasks, {time.perf_counter() - start:.0f} s")
        finally:
            for w in workers.values():
                w.stop()
    out = summarize(tasks, results, {n: {**(w.info or {}), "restarts": w.restarts} for n, w in workers.items()})
    return {**out, "left_out": missing}


def _annotate(result: dict[str, Any], task: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Where the first valid document that was refused went wrong: the text before it and the token."""
    for j, d in enumerate(d for d in result["docs"] if d["kind"] == "valid"):
        if d["outcome"] == "rejected":
            tokens, at = task["valid"][j], d.get("at")
            before = tokenizer.decode(tokens[: len(tokens) if at is None else at])[-60:]
            token = "<EOS>" if at is None else tokenizer.decode([tokens[at]])
            result["first_refusal"] = {"doc": j, "token_index": at, "context": f"{before!r} >> {token!r}"}
            break
    return result


def _pct(values: Any, q: float, scale: float) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)) * scale, 3) if len(values) else None


def _pattern(message: str) -> str:
    """An error message with its schema-specific parts (quoted text, numbers, paths) blanked."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message.split("\n")[0])
    return re.sub(r"\b\d+(\.\d+)?\b", "N", re.sub(r"#/[^\s,;)]*", "#/…", text))[:110]


def _frames(trace: str) -> str:
    """The innermost three distinct source places of a traceback (generated code like a dataclass's
    `__hash__` left out)."""
    places = [
        f"{pathlib.Path(f).name}:{n} {fn}" for f, n, fn in re.findall(r'File "([^"<]+)", line (\d+), in (\S+)', trace)
    ]
    return " < ".join(list(dict.fromkeys(reversed(places)))[:3])


def summarize(tasks: list[dict[str, Any]], results: dict[str, dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    json_keys = [f"json:{t['name']}" for t in tasks if t["kind"] == "json"]
    common = [k for k in json_keys if all(results[n][k]["status"] == "covered" for n in results)]
    out: dict[str, Any] = {"schemas": len(json_keys), "covered_by_all": len(common), "libraries": {}, "ebnf": {}}
    for n, per in results.items():
        counts = Counter(per[k]["status"] for k in json_keys)
        docs = [d for k in json_keys for d in per[k]["docs"]]
        valid = [d for d in docs if d["kind"] == "valid"]
        invalid = [d for d in docs if d["kind"] == "invalid"]
        ttfm = [per[k]["ttfm_ms"] for k in json_keys if per[k]["status"] == "covered"]
        masks = np.concatenate([per[k].get("mask_ns", np.zeros(0, np.int64)) for k in json_keys] or [np.zeros(0)])
        errors = Counter(_pattern(per[k].get("message", "")) for k in json_keys if per[k]["status"] == "error")
        examples = {_pattern(per[k].get("message", "")): k[5:] for k in json_keys if per[k]["status"] == "error"}
        bugs = [
            {"task": k, "where": where, "message": x["message"][:300], "trace": x.get("trace", "")}
            for k in per
            for where, x in [("compile", per[k]), *(("walk", d) for d in per[k]["docs"])]
            if x.get("status", x.get("outcome")) == "bug"
        ]
        refusals = [
            {"schema": k[5:], **per[k]["first_refusal"], "peers_accepting": _peers_accepting(results, n, k, j)}
            for k in json_keys
            if (j := (per[k].get("first_refusal") or {}).get("doc")) is not None
        ]
        out["libraries"][n] = {
            **info[n],
            "covered": counts["covered"],
            "errors": counts["error"],
            "overruns": counts["timeout"] + counts["memory"],
            "killed": sum(bool(per[k].get("killed")) for k in json_keys),  # compiles; walks: walk_timeouts
            "memory": counts["memory"],
            "bugs": counts["bug"],
            "crashes": counts["crash"],
            "valid_docs": len(valid),
            "valid_accepted": sum(d["outcome"] == "accepted" for d in valid),
            "invalid_docs": len(invalid),
            "invalid_rejected": sum(d["outcome"] == "rejected" for d in invalid),
            "walk_timeouts": sum(d["outcome"] == "timeout" for d in docs),
            "walk_errors": sum(d["outcome"] in ("error", "bug", "crash") for d in docs),
            "mask_mismatches": sum(d.get("mismatches", 0) for d in docs),
            "ttfm_ms_p50": _pct(ttfm, 50, 1.0),
            "ttfm_ms_p90": _pct(ttfm, 90, 1.0),
            "ttfm_ms_p50_covered_by_all": _pct([per[k]["ttfm_ms"] for k in common], 50, 1.0),
            "mask_us_p50": _pct(masks, 50, 1e-3),
            "mask_us_p99": _pct(masks, 99, 1e-3),
            "mask_steps": int(len(masks)),
            "top_errors": [{"count": c, "message": m, "example": examples[m]} for m, c in errors.most_common(10)],
            "bugs_list": bugs[:50],
            "refusals": refusals,
            "bug_count": len(bugs),
            "per_schema": {k[5:]: _brief(per[k]) for k in json_keys},
        }
        out["ebnf"][n] = {t["name"]: _brief(per[f"ebnf:{t['name']}"]) for t in tasks if t["kind"] == "ebnf"}
    return out


def _peers_accepting(results: dict[str, dict[str, Any]], name: str, key: str, j: int) -> list[str]:
    """The other libraries that accepted valid document `j` of `key`."""
    out = []
    for other, per in results.items():
        valid = [d for d in per[key]["docs"] if d["kind"] == "valid"]
        if other != name and j < len(valid) and valid[j]["outcome"] == "accepted":
            out.append(other)
    return out


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    docs, got = r["docs"], lambda kind, outcome: [d["outcome"] == outcome for d in r["docs"] if d["kind"] == kind]
    return {
        "status": r["status"],
        "ttfm_ms": round(r["ttfm_ms"], 3) if r.get("ttfm_ms") is not None else None,
        "message": (r.get("message") or "")[:300],
        "valid": [sum(ok := got("valid", "accepted")), len(ok)],
        "invalid": [sum(ok := got("invalid", "rejected")), len(ok)],
        "mask_mismatches": sum(d.get("mismatches", 0) for d in docs),
        "outcomes": [f"{d['kind']}:{d['outcome']}" for d in docs],
        "first_refusal": r.get("first_refusal"),
    }


# ---- output ------------------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "-"


def format_summary(result: dict[str, Any]) -> str:
    libs = result["libraries"]
    n, total = list(libs), result["schemas"]
    rows = [
        ("version", lambda s: s.get("version", "-")),
        ("vocabulary set-up ms", lambda s: _f(s.get("setup_ms"))),
        ("warm-up compile ms (excluded)", lambda s: _f(s.get("warmup_ms"))),
        ("schemas covered", lambda s: _share(s["covered"], total)),
        ("compile errors", lambda s: str(s["errors"])),
        ("overruns (killed by watchdog)", lambda s: f"{s['overruns']} ({s['killed']})"),
        ("bugs (non-GrammarError)", lambda s: str(s["bug_count"]) if s is libs.get("loomlm") else "-"),
        ("worker crashes", lambda s: str(s["crashes"])),
        ("valid docs accepted", lambda s: _share(s["valid_accepted"], s["valid_docs"])),
        ("invalid docs rejected", lambda s: _share(s["invalid_rejected"], s["invalid_docs"])),
        ("doc walk timeouts / errors", lambda s: f"{s['walk_timeouts']} / {s['walk_errors']}"),
        ("mask vs advance mismatches", lambda s: str(s["mask_mismatches"])),
        ("first mask p50 ms", lambda s: _f(s["ttfm_ms_p50"])),
        ("first mask p90 ms", lambda s: _f(s["ttfm_ms_p90"])),
        (
            f"first mask p50 ms ({result['covered_by_all']} covered by all)",
            lambda s: _f(s["ttfm_ms_p50_covered_by_all"]),
        ),
        ("mask p50 us", lambda s: _f(s["mask_us_p50"], 1)),
        ("mask p99 us", lambda s: _f(s["mask_us_p99"], 1)),
        ("mask steps timed", lambda s: str(s["mask_steps"])),
    ]
    return text_table(["JSON-schema corpus", *(LABELS[x] for x in n)], [[r, *(f(libs[x]) for x in n)] for r, f in rows])


def format_ebnf(result: dict[str, Any]) -> str:
    names = list(result["ebnf"])
    headers = ["EBNF (lark)", *(LABELS[x] + (" (GBNF translation)" if x == "xgrammar" else "") for x in names)]

    def cell(b: dict[str, Any]) -> str:
        if b["status"] != "covered":
            return b["status"]
        v, i = b["valid"], b["invalid"]
        return f"valid {v[0]}/{v[1]}, invalid rejected {i[0]}/{i[1]}, {b['ttfm_ms']:.1f} ms"

    cases = list(result["ebnf"][names[0]]) if names else []
    return text_table(headers, [[c, *(cell(result["ebnf"][x][c]) for x in names)] for c in cases])


def format_loomlm_problems(result: dict[str, Any]) -> str:
    loom = result["libraries"].get("loomlm")
    if loom is None:
        return ""
    errors = text_table(
        ["loomlm compile error (most common)", "schemas", "example"],
        [[e["message"], str(e["count"]), e["example"]] for e in loom["top_errors"]] or [["(none)", "0", "-"]],
    )
    kinds = Counter((b["where"], b["message"].split("\n")[0][:90], _frames(b["trace"])) for b in loom["bugs_list"])
    bugs = text_table(
        ["loomlm non-GrammarError exception", "where", "count", "raised at"],
        [[m, w, str(c), f] for (w, m, f), c in kinds.most_common(10)] or [["(none)", "-", "0", "-"]],
    )
    refused = text_table(
        ["loomlm refused a valid document (first 12 schemas)", "token", "text before >> refused token", "peers accept"],
        [
            [r["schema"], str(r["token_index"]), r["context"][-100:], ",".join(r["peers_accepting"]) or "-"]
            for r in loom["refusals"][:12]
        ]
        or [["(none)", "-", "-", "-"]],
    )
    ebnf = [
        f"  {c}: {b['message'][:150]}" for c, b in result["ebnf"].get("loomlm", {}).items() if b["status"] != "covered"
    ]
    return "\n\n".join([errors, bugs, refused] + (["loomlm EBNF failures:\n" + "\n".join(ebnf)] if ebnf else []))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench grammar-corpus", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=pathlib.Path, default=CORPUS, help="folder of the SchemaStore corpus")
    p.add_argument("--limit", type=int, default=None, help="the first N schemas only")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated: " + ", ".join(LIBRARIES))
    p.add_argument("--budget", type=float, default=10.0, help="seconds for compile + first mask")
    p.add_argument("--doc-budget", type=float, default=60.0, help="seconds to walk one document")
    p.add_argument("--grace", type=float, default=5.0, help="seconds past a budget before the watchdog kills")
    p.add_argument("--memory-gb", type=float, default=8.0, help="address space a worker may add (0: no limit)")
    p.add_argument("--no-ebnf", action="store_true", help="skip the EBNF cases")
    p.add_argument("--model", default=None, help="tokenizer of this model (default: the default model)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.libraries.split(",") if n.strip()]
    bad = [n for n in names if n not in LIBRARIES]
    if bad or not names or not args.budget > 0 or (args.limit is not None and args.limit < 0):
        print(f"bad --libraries {bad} (from {', '.join(LIBRARIES)}), --budget or --limit", file=sys.stderr)
        return 2
    if not args.corpus.is_dir():
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 2
    from loomlm.runtime.tokenizer import load_tokenizer

    log = lambda message: print(f"[bench grammar-corpus] {message}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    entries = load_corpus(args.corpus, args.limit)
    log(f"tokenizer and {len(entries)} schemas loaded in {time.perf_counter() - start:.1f} s")
    result = run_corpus(
        entries,
        () if args.no_ebnf else EBNF_CASES,
        names,
        tokenizer,
        budget=args.budget,
        doc_budget=args.doc_budget,
        grace=args.grace,
        memory_gb=args.memory_gb,
        log=log,
    )
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["environment"] = environment(torch.device("cpu"))
    result["args"] = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}
    print(format_summary(result))
    for n, why in result["left_out"].items():
        print(f"{LABELS[n]} left out: {why}")
    if result["ebnf"] and any(result["ebnf"].values()):
        print("\n" + format_ebnf(result))
    print("\n" + format_loomlm_problems(result))
    env = result["environment"]
    print(f"\n{result['wall_s']} s wall; {env['hardware']}; torch {env['torch']}; {env['date']}")
    if args.json:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
