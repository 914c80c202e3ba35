"""`python -m loomlm.bench grammar`: constrained decoding, loomlm against Outlines-core and XGrammar.

On the default model's tokenizer, for the JSON schemas and regexes of `grammar_workload` (nested
objects, arrays, enums, string formats, optional properties, number bounds, anyOf; phone, email, IPv4,
date), in one run:
- vocabulary set-up: each library's one-time per-tokenizer work (loomlm's byte table and token trie,
  Outlines-core's `Vocabulary`, XGrammar's `TokenizerInfo`), its own row, never in compile times;
- compile time: `--compile-repeats` cold compiles per case (no cache: a fresh loomlm compile, a fresh
  Outlines-core regex build + `Index`, a fresh XGrammar `GrammarCompiler(cache_enabled=False)`), the
  median per case, then the median over the JSON schemas (and separately the regexes) that every
  library compiled; a compile past `--timeout` seconds is abandoned and reported;
- per-token mask time: each case's example is tokenized (+ EOS) and walked `--repeats` times per
  library; only producing the current state's mask into a preallocated bitmask is timed, p50/p99 over
  all steps of the cases every library walked. loomlm's figure is the engine's path (gather the state's
  row of the guide's mask table into a [1, W] tensor); its numpy row copy is reported beside it;
- agreement: in a first, untimed lockstep walk every library's mask must allow each trajectory token
  (`mask_disagreements` counts the misses, rejected tokens and loomlm torch/numpy mismatches);
- end to end (`grammar_e2e`, unless `--skip-e2e`): greedy JSON-schema generation on the default model,
  batch 1, on two fresh engines with jump-forward on and off: forward passes, wall time, validity.
With `--json` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from loomlm.bench.common import add_model_arguments
from loomlm.bench.grammar_adapters import LIBRARIES, Library, Walker, load_libraries
from loomlm.bench.grammar_workload import JSON_SCHEMA, REGEX, REGEXES, SCHEMAS, Case, select
from loomlm.bench.report import environment, text_table

LABELS = {
    "loomlm": "loomlm",
    "loomlm_numpy": "loomlm (numpy row copy)",
    "outlines_core": "Outlines-core",
    "xgrammar": "XGrammar",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench grammar", description=__doc__.split("\n")[0])
    p.add_argument("--schemas", type=int, default=len(SCHEMAS), help="use the first N JSON schemas")
    p.add_argument("--regexes", type=int, default=len(REGEXES), help="use the first N regexes")
    p.add_argument("--repeats", type=int, default=20, help="timed walks of each trajectory per library")
    p.add_argument("--compile-repeats", type=int, default=3, help="cold compiles per case and library")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a compile is abandoned")
    p.add_argument(
        "--libraries",
        default=",".join(LIBRARIES),
        help="comma-separated; loomlm always runs (missing baselines are reported, not fatal)",
    )
    p.add_argument(
        "--xgrammar-any-whitespace",
        action="store_true",
        help="XGrammar JSON with arbitrary whitespace (default: its compact separators)",
    )
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end generation")
    p.add_argument("--e2e-max-new-tokens", type=int, default=200)
    p.add_argument("--e2e-repeats", type=int, default=1, help="requests per schema and mode")
    add_model_arguments(p, device_help="device of the end-to-end engines: auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def _check_args(args: argparse.Namespace) -> list[str]:
    for name in ("repeats", "compile_repeats", "e2e_max_new_tokens", "e2e_repeats"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.schemas < 0 or args.regexes < 0 or args.schemas + args.regexes == 0:
        raise ValueError("--schemas and --regexes must be >= 0 and not both 0")
    if not args.timeout > 0:
        raise ValueError("--timeout must be positive")
    names = [n.strip() for n in args.libraries.split(",") if n.strip()]
    bad = [n for n in names if n not in LIBRARIES]
    if bad:
        raise ValueError(f"--libraries takes names from {', '.join(LIBRARIES)}, got {', '.join(bad)}")
    return names


def _log(message: str) -> None:
    print(f"[bench grammar] {message}", file=sys.stderr, flush=True)


# ---- compile ---------------------------------------------------------------------------------------


def timed_call(fn: Any, timeout_s: float) -> tuple[float | None, Any, str | None]:
    """(seconds, result, error) of `fn()` run on a worker thread. Past `timeout_s` the thread is
    abandoned (native compilers cannot be interrupted) and the error says so."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.perf_counter()
        try:
            box["value"] = fn()
        except Exception as exc:
            box["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        box["seconds"] = time.perf_counter() - start

    worker = threading.Thread(target=run, daemon=True, name="bench-grammar-compile")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return None, None, f"timeout: still compiling after {timeout_s:g} s (abandoned)"
    if "error" in box:
        return None, None, box["error"]
    if box["seconds"] > timeout_s:
        return None, None, f"timeout: took {box['seconds']:.1f} s (limit {timeout_s:g} s)"
    return box["seconds"], box["value"], None


def compile_all(
    libs: list[Library], cases: list[Case], repeats: int, timeout_s: float
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], Any]]:
    """Per (case, library): {"ms": median, "runs": [...], "error", "detail"}, and the compiled objects.
    Repeats are interleaved over cases and libraries so drift in machine load hits all alike."""
    results: dict[tuple[str, str], dict[str, Any]] = {
        (c.name, lib.name): {"runs": [], "error": None, "detail": ""} for c in cases for lib in libs
    }
    compiled: dict[tuple[str, str], Any] = {}
    for _ in range(repeats):
        for case in cases:
            for lib in libs:
                entry = results[(case.name, lib.name)]
                if entry["error"]:
                    continue
                seconds, value, error = timed_call(lib.compiler(case, timeout_s), timeout_s)
                if error:
                    entry["error"] = error
                    compiled.pop((case.name, lib.name), None)
                    continue
                entry["runs"].append(seconds * 1e3)
                compiled[(case.name, lib.name)] = value
                entry["detail"] = lib.describe(value)
    for entry in results.values():
        entry["ms"] = statistics.median(entry["runs"]) if entry["runs"] and not entry["error"] else None
    return results, compiled


# ---- masks -----------------------------------------------------------------------------------------


def _allows(mask: np.ndarray, token: int) -> bool:
    return bool((int(mask[token >> 5]) >> (token & 31)) & 1)


def verify(tokens: list[int], walkers: dict[str, Walker]) -> dict[str, Any]:
    """Lockstep, untimed walk of every library: each mask must allow the trajectory's token; full masks
    are compared with loomlm's (identical only where the grammars are the same, e.g. regexes). A
    library that rejects a token is dropped from `walkers` (and from timing) for this case."""
    out: dict[str, Any] = {
        "steps": len(tokens),
        "disagreements": {n: 0 for n in walkers},
        "identical_to_loomlm": {},
        "notes": [],
    }
    loom = walkers["loomlm"]
    for w in walkers.values():
        w.reset()
    for i, token in enumerate(tokens):
        for w in walkers.values():
            w.fill()
        loom.fill_numpy()
        reference = loom.mask()
        if not np.array_equal(reference, loom.numpy_mask()):
            out["disagreements"]["loomlm"] += 1
            out["notes"].append(f"step {i}: loomlm torch and numpy masks differ")
        for name, w in list(walkers.items()):
            mask = w.mask()
            if not _allows(mask, token):
                out["disagreements"][name] += 1
                out["notes"].append(f"step {i}: {name} does not allow token {token}")
            if name != "loomlm":
                same = out["identical_to_loomlm"]
                same[name] = same.get(name, 0) + int(np.array_equal(mask, reference))
        if i < len(tokens) - 1:
            for name, w in list(walkers.items()):
                if not w.advance(token):
                    out["disagreements"][name] += 1
                    out["notes"].append(f"step {i}: {name} rejects token {token}; dropped for this case")
                    if name == "loomlm":
                        walkers.clear()
                        return out
                    del walkers[name]
    return out


def time_masks(tokens: list[int], walkers: dict[str, Walker], repeats: int) -> dict[str, list[int]]:
    """Nanoseconds of every timed `fill` per library (plus "loomlm_numpy"), `repeats` walks each."""
    times: dict[str, list[int]] = {name: [] for name in walkers}
    if "loomlm" in walkers:
        times["loomlm_numpy"] = []
    last = len(tokens) - 1
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, w in walkers.items():
                fills = [(name, w.fill)] + ([("loomlm_numpy", w.fill_numpy)] if name == "loomlm" else [])
                for key, fill in fills:
                    out, advance = times[key], w.advance
                    w.reset()
                    for i, token in enumerate(tokens):
                        t0 = clock()
                        fill()
                        out.append(clock() - t0)
                        if i < last:
                            advance(token)
    finally:
        if enabled:
            gc.enable()
    return times


def _us(values: Sequence[int], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)) / 1e3, 3) if values else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


# ---- the micro-benchmark -----------------------------------------------------------------------------


def run_micro(args: argparse.Namespace, names: list[str], tokenizer: Any) -> dict[str, Any]:
    cases = select(args.schemas, args.regexes)
    _log(f"vocabulary set-up: {', '.join(names)}")
    libs, versions = load_libraries(tokenizer, names, args.xgrammar_any_whitespace)
    lib_names = [lib.name for lib in libs]
    eos = int(tokenizer.eos_token_id)
    _log(f"compiling {len(cases)} cases x {len(libs)} libraries x {args.compile_repeats} (cold)")
    compiles, compiled = compile_all(libs, cases, args.compile_repeats, args.timeout)

    per_case: dict[str, dict[str, Any]] = {}
    steps: dict[str, list[int]] = {}  # all timed fills of the cases every library walked
    disagreements: dict[str, int] = {lib.name: 0 for lib in libs}
    checked = 0
    identical: dict[str, int] = {}
    _log(f"walking trajectories: {args.repeats} timed walks per case and library")
    for case in cases:
        tokens = tokenizer.encode(case.example, add_special_tokens=False) + [eos]
        walkers = {
            lib.name: lib.walker(compiled[(case.name, lib.name)]) for lib in libs if (case.name, lib.name) in compiled
        }
        row: dict[str, Any] = {
            "kind": case.kind,
            "tokens": len(tokens),
            "compile_ms": {n: compiles[(case.name, n)]["ms"] for n in lib_names},
            "errors": {n: compiles[(case.name, n)]["error"] for n in lib_names if compiles[(case.name, n)]["error"]},
            "loomlm": compiles[(case.name, "loomlm")]["detail"],
        }
        per_case[case.name] = row
        if "loomlm" not in walkers:
            continue
        check = verify(tokens, walkers)
        for n, k in check["disagreements"].items():
            disagreements[n] += k
        checked += check["steps"]
        for n, k in check["identical_to_loomlm"].items():
            identical[n] = identical.get(n, 0) + k
        row.update(
            disagreements=check["disagreements"],
            notes=check["notes"][:5],
            identical_to_loomlm=check["identical_to_loomlm"],
        )
        times = time_masks(tokens, walkers, args.repeats)
        row["mask_us_p50"] = {n: _us(v, 50) for n, v in times.items()}
        if set(walkers) == set(lib_names):
            for n, v in times.items():
                steps.setdefault(n, []).extend(v)

    def compile_median(name: str, kind: str) -> float | None:
        common = [
            c for c in cases if c.kind == kind and all(compiles[(c.name, n)]["ms"] is not None for n in lib_names)
        ]
        return _median([compiles[(c.name, name)]["ms"] for c in common])

    out: dict[str, Any] = {}
    for name in ("loomlm", "loomlm_numpy", "outlines_core", "xgrammar"):
        present = name in lib_names or (name == "loomlm_numpy")
        out[f"{name}_mask_us_p50"] = _us(steps.get(name, []), 50) if present else None
        out[f"{name}_mask_us_p99"] = _us(steps.get(name, []), 99) if present else None
        if name == "loomlm_numpy":
            continue
        lib = next((lib for lib in libs if lib.name == name), None)
        out[f"{name}_compile_ms_median"] = compile_median(name, JSON_SCHEMA) if lib else None
        out[f"{name}_regex_compile_ms_median"] = compile_median(name, REGEX) if lib else None
        out[f"{name}_vocab_setup_ms"] = round(lib.setup_s * 1e3, 2) if lib else None
        out[f"{name}_compile_failures"] = sorted(c.name for c in cases if lib and compiles[(c.name, name)]["error"])
    out.update(
        {
            "mask_disagreements": sum(disagreements.values()),
            "mask_disagreements_by_library": disagreements,
            "mask_checked_steps": checked,
            "mask_identical_to_loomlm": identical,
            "mask_timed_steps": len(steps.get("loomlm", [])),
            "mask_cases": sum(
                1
                for r in per_case.values()
                if "mask_us_p50" in r and all(r["mask_us_p50"].get(n) is not None for n in lib_names)
            ),
            "libraries": {n: versions.get(n, "not requested") for n in LIBRARIES},
            "available_libraries": lib_names,
            "cases": per_case,
        }
    )
    return out


def targets(result: dict[str, Any]) -> dict[str, bool | None]:
    def le(a: Any, b: Any, factor: float = 1.0) -> bool | None:
        return None if a is None or b is None else a <= factor * b

    loom = result.get("loomlm_compile_ms_median")
    return {
        "mask_p50_le_xgrammar": le(result.get("loomlm_mask_us_p50"), result.get("xgrammar_mask_us_p50")),
        "compile_le_3x_outlines_core": le(loom, result.get("outlines_core_compile_ms_median"), 3.0),
        "compile_lt_100ms": None if loom is None else loom < 100.0,
    }


# ---- output ------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_cases(result: dict[str, Any]) -> str:
    names = result["available_libraries"]
    headers = [
        "case",
        "kind",
        "tokens",
        *(f"{LABELS[n]} compile ms" for n in names),
        "loomlm DFA",
        *(f"{LABELS[n]} mask p50 us" for n in names),
    ]
    body = []
    for name, row in result["cases"].items():
        p50 = row.get("mask_us_p50", {})
        body.append(
            [
                name,
                row["kind"],
                str(row["tokens"]),
                *(
                    _fmt(row["compile_ms"][n])
                    if row["compile_ms"][n] is not None
                    else ("error" if n in row["errors"] else "-")
                    for n in names
                ),
                row["loomlm"] or "-",
                *(_fmt(p50.get(n)) for n in names),
            ]
        )
    return text_table(headers, body)


def format_summary(result: dict[str, Any]) -> str:
    headers = (
        "library",
        "version",
        "vocab set-up ms",
        "schema compile ms (median)",
        "regex compile ms (median)",
        "mask p50 us",
        "mask p99 us",
    )
    body = []
    for name in ("loomlm", "loomlm_numpy", "outlines_core", "xgrammar"):
        base = "loomlm" if name == "loomlm_numpy" else name
        version = result["libraries"][base]
        if name == "loomlm_numpy":
            body.append(
                [
                    LABELS[name],
                    "",
                    "",
                    "",
                    "",
                    _fmt(result["loomlm_numpy_mask_us_p50"]),
                    _fmt(result["loomlm_numpy_mask_us_p99"]),
                ]
            )
            continue
        body.append(
            [
                LABELS[name] + (" (engine path: ConstraintMasks gather)" if name == "loomlm" else ""),
                version,
                _fmt(result[f"{name}_vocab_setup_ms"]),
                _fmt(result[f"{name}_compile_ms_median"]),
                _fmt(result[f"{name}_regex_compile_ms_median"]),
                _fmt(result[f"{name}_mask_us_p50"]),
                _fmt(result[f"{name}_mask_us_p99"]),
            ]
        )
    return text_table(headers, body)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = _check_args(args)
    except ValueError as exc:
        print(f"python -m loomlm.bench grammar: {exc}", file=sys.stderr)
        return 2
    from loomlm.runtime.tokenizer import load_tokenizer

    load_before = os.getloadavg()[0]
    tokenizer = load_tokenizer(args.model_path)
    result = run_micro(args, names, tokenizer)
    result["targets"] = targets(result)
    rc = 0
    e2e: dict[str, Any] | None = None
    if not args.skip_e2e:
        from loomlm.bench.grammar_e2e import format_e2e, run_end_to_end

        try:
            e2e = run_end_to_end(args)
        except Exception as exc:
            e2e = {"error": f"{type(exc).__name__}: {exc}"}
            _log(f"end to end failed: {e2e['error']}")
            rc = 1
    result["jump_forward_forward_pass_reduction"] = (e2e or {}).get("jump_forward_forward_pass_reduction")
    result["e2e"] = e2e if e2e is not None else "skipped"

    print(format_cases(result))
    print()
    print(format_summary(result))
    by_lib = ", ".join(f"{LABELS[n]} {k}" for n, k in result["mask_disagreements_by_library"].items())
    print(
        f"mask agreement: {result['mask_disagreements']} disagreements ({by_lib}) over "
        f"{result['mask_checked_steps']} trajectory steps; masks identical to loomlm's: "
        + (
            ", ".join(
                f"{LABELS[n]} {k}/{result['mask_checked_steps']}" for n, k in result["mask_identical_to_loomlm"].items()
            )
            or "-"
        )
    )
    print(
        "compile and mask medians over the cases every library handled; failures: "
        + (
            "; ".join(
                f"{LABELS[n]}: {', '.join(result[f'{n}_compile_failures'])}"
                for n in ("loomlm", "outlines_core", "xgrammar")
                if result.get(f"{n}_compile_failures")
            )
            or "none"
        )
    )
    print("targets: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result["targets"].items()))
    if e2e is not None:
        print()
        print(format_e2e(e2e))
    if args.json:
        result.update(
            {
                "schemas": args.schemas,
                "regexes": args.regexes,
                "repeats": args.repeats,
                "compile_repeats": args.compile_repeats,
                "timeout_s": args.timeout,
                "xgrammar_any_whitespace": args.xgrammar_any_whitespace,
                "torch_threads": torch.get_num_threads(),
                "model": args.model_path or "default (SmolLM2-135M-Instruct Q4_1 GGUF)",
                "load_average_1m_before": round(load_before, 2),
                **environment(torch.device("cpu")),
            }
        )
        print(json.dumps(result))
    return rc


if __name__ == "__main__":
    sys.exit(main())
