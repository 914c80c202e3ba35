"""End-to-end part of `python -m loomlm.bench grammar`: what jump-forward saves in constrained generation.

For each selected JSON schema the default model is asked (chat template, greedy) for a JSON object of
that schema, one request at a time (batch 1, so forward passes per request mean something), on two
fresh engines: jump-forward on and off. Recorded per mode: forward passes (the engine's counter),
wall time (which includes each engine's first compile of each schema, alike in both modes), output
tokens, and whether each output parses and validates against its schema (`jsonschema`, formats
checked). Greedy texts may differ between the modes: jump-forward appends forced text retokenized,
so the model sees other tokens than it would have picked.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from typing import Any

from loomlm.bench.grammar_workload import select
from loomlm.bench.report import text_table
from loomlm.runtime.config import EngineConfig

MODES = (("jump-forward on", False), ("jump-forward off", True))  # (label, disable_jump_forward)


def _prompt_text(schema: dict[str, Any]) -> str:
    return f"Give me a JSON object for this schema: {json.dumps(schema)}"


def _validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        return None
    checker = jsonschema.FormatChecker()
    return lambda obj, schema: jsonschema.validate(obj, schema, format_checker=checker)


@dataclass
class ModeResult:
    label: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def total(self, key: str) -> int:
        return sum(r.get(key) or 0 for r in self.requests)

    def as_dict(self) -> dict[str, Any]:
        n = len(self.requests)
        return {
            "requests": n,
            "forward_passes": self.total("forward_passes"),
            "output_tokens": self.total("output_tokens"),
            "wall_s": round(self.wall_s, 3),
            "valid_json": self.total("valid_json"),
            "schema_valid": self.total("schema_valid"),
            "errors": sum(1 for r in self.requests if r.get("error")),
            "forward_passes_per_request": round(self.total("forward_passes") / n, 2) if n else None,
            "per_request": self.requests,
        }


def _run_mode(args: argparse.Namespace, label: str, disable_jump_forward: bool) -> ModeResult:
    from loomlm.runtime.engine import Engine

    engine = Engine(
        model_path=args.model_path,
        dtype=args.dtype,
        load_format=args.load_format,
        device=args.device,
        random_seed=args.seed,
        disable_jump_forward=disable_jump_forward,
    )
    validate = _validator()
    out = ModeResult(label)
    try:
        engine.generate(["Hello"], {"max_new_tokens": 2, "temperature": 0})  # warm-up
        for case in select(args.schemas, 0):
            prompt = engine.apply_chat_template([{"role": "user", "content": _prompt_text(case.spec)}])
            params = {"json_schema": case.spec_text, "max_new_tokens": args.e2e_max_new_tokens, "temperature": 0}
            for rep in range(args.e2e_repeats):
                rec: dict[str, Any] = {"case": case.name, "repeat": rep}
                before = engine.get_stats()["forward_passes"]
                start = time.perf_counter()
                try:
                    res = engine.generate([prompt], params)[0]
                except Exception as exc:
                    rec["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    out.requests.append(rec)
                    continue
                wall = time.perf_counter() - start
                out.wall_s += wall
                rec.update(
                    forward_passes=engine.get_stats()["forward_passes"] - before,
                    wall_s=round(wall, 3),
                    output_tokens=len(res["output_ids"]),
                    text=res["text"],
                    finish_reason=(res["meta_info"].get("finish_reason") or {}).get("type"),
                )
                rec.update(_check(res["text"], case.spec, validate))
                out.requests.append(rec)
    finally:
        engine.shutdown()
    return out


def _check(text: str, schema: dict[str, Any], validate: Any) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"valid_json": 0, "schema_valid": 0, "invalid": f"JSON: {exc}"}
    if validate is None:
        return {"valid_json": 1, "schema_valid": None, "invalid": "jsonschema not installed"}
    try:
        validate(obj, schema)
    except Exception as exc:
        return {"valid_json": 1, "schema_valid": 0, "invalid": f"schema: {str(exc).splitlines()[0][:200]}"}
    return {"valid_json": 1, "schema_valid": 1}


def run_end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    """Both modes on fresh engines; `jump_forward_forward_pass_reduction` = 1 - passes on / passes off
    (over the requests that finished in both modes)."""
    runs = {}
    for label, disable in MODES:
        runs[label] = _run_mode(args, label, disable)
    on, off = (runs[label] for label, _ in MODES)
    ok = [(a, b) for a, b in zip(on.requests, off.requests) if not a.get("error") and not b.get("error")]
    passes_on = sum(a["forward_passes"] for a, _ in ok)
    passes_off = sum(b["forward_passes"] for _, b in ok)
    # Requests cut off by max_new_tokens in either mode (a degenerate greedy loop) say little about
    # jump-forward: the same ratio over the requests that stopped on their own in both.
    done = [(a, b) for a, b in ok if a["finish_reason"] != "length" and b["finish_reason"] != "length"]
    done_on, done_off = sum(a["forward_passes"] for a, _ in done), sum(b["forward_passes"] for _, b in done)
    return {
        "jump_forward_forward_pass_reduction": round(1 - passes_on / passes_off, 4) if passes_off else None,
        "jump_forward_forward_pass_reduction_finished": round(1 - done_on / done_off, 4) if done_off else None,
        "finished_in_both": len(done),
        "forward_passes_on": passes_on,
        "forward_passes_off": passes_off,
        "wall_s_on": round(sum(a["wall_s"] for a, _ in ok), 3),
        "wall_s_off": round(sum(b["wall_s"] for _, b in ok), 3),
        "same_text": sum(a["text"] == b["text"] for a, b in ok),
        "compared_requests": len(ok),
        "max_new_tokens": args.e2e_max_new_tokens,
        "dtype": args.dtype,
        "device": str(EngineConfig(device=args.device).resolved_device()),
        "requests_per_schema": args.e2e_repeats,
        "modes": {label: r.as_dict() for label, r in runs.items()},
    }


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_e2e(e2e: dict[str, Any]) -> str:
    if "error" in e2e:
        return f"end to end: failed: {e2e['error']}"
    headers = (
        "mode",
        "requests",
        "forward passes",
        "passes/request",
        "output tokens",
        "wall s",
        "valid JSON",
        "schema-valid",
        "errors",
    )
    body = []
    for label, r in e2e["modes"].items():
        body.append(
            (
                label,
                str(r["requests"]),
                str(r["forward_passes"]),
                str(r["forward_passes_per_request"]),
                str(r["output_tokens"]),
                f"{r['wall_s']:.2f}",
                str(r["valid_json"]),
                str(r["schema_valid"]),
                str(r["errors"]),
            )
        )
    red = e2e["jump_forward_forward_pass_reduction"]
    tail = (
        (
            f"jump-forward saves {red:.1%} of forward passes ({e2e['forward_passes_on']} vs "
            f"{e2e['forward_passes_off']}), wall {e2e['wall_s_on']:.2f} s vs {e2e['wall_s_off']:.2f} s; "
            f"{_fmt_pct(e2e['jump_forward_forward_pass_reduction_finished'])} over the {e2e['finished_in_both']} "
            f"requests that stopped before max_new_tokens in both modes; identical text in "
            f"{e2e['same_text']}/{e2e['compared_requests']} requests"
        )
        if red is not None
        else "jump-forward reduction: - (no request finished in both modes)"
    )
    return text_table(headers, body) + "\n" + tail
