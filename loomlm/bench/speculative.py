"""`python -m loomlm.bench speculative`: n-gram (prompt lookup) speculative decoding against plain decoding,
greedy, on the default model, measured in one run.

Two engines, speculation off and on (`speculative_algorithm="NGRAM"`, `--draft-tokens` drafts per request
and step), run the same requests, the measurements interleaved (off, on, off, on, ...; the minimum of
`--repeats` is kept, the prefix cache flushed before each). Workloads: `copy`, chat prompts that ask the
model to repeat a paragraph of its context (drafts found in the prompt should be accepted); `novel`,
open questions whose answers repeat little (drafts rarely match: the cost of trying); `random`, random
token ids with EOS ignored (the small model's greedy continuation of noise soon loops, which drafts from
its own output match). Batch 1 (requests one after another) is the headline; `--batch N` adds rows with
N requests per `generate` call. Per row: wall time off and on, their ratio, tok/s, accepted tokens per
verify pass per request (1 + accepted drafts), the share of drafts accepted and of output tokens that
came from drafts, and whether the greedy outputs are identical (else the first differing prompt and
token index).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

from loomlm.bench.report import _cpu_model, text_table

COPY_INSTRUCTION = "Here is a text. Repeat it back to me verbatim."
COPY_TEXTS = (
    "Product: the Halden TK-4 trail kettle. The TK-4 is a one-litre titanium kettle for hikers who count every "
    "gram. It weighs 142 grams without its lid, folds its handle flat against the side, and nests a 100-gram gas "
    "canister and a small stove inside. The spout is shaped to pour without dripping, and the lid has a silicone "
    "grip that stays cool above a rolling boil. Boil time for one litre of water at sea level is about four "
    "minutes on a standard canister stove. The kettle ships with a mesh storage bag and a lifetime warranty "
    "against manufacturing defects.",
    "The lighthouse at Corran Point was built in 1868 from granite quarried on the island itself. Its tower is "
    "twenty-six metres tall and its lamp, first fuelled by whale oil and later by paraffin, could be seen from "
    "thirty kilometres out at sea. The last keeper, a man named Ewan Moffat, left in 1987 when the light was "
    "automated. Today the keeper's cottage is a small museum that opens from May to September, and visitors can "
    "climb the one hundred and twelve steps to the lantern room on the first Saturday of each month.",
    '{"customer_id": 48213, "name": "Marta Kowalczyk", "email": "marta.k@example.org", "city": "Gdansk", '
    '"country": "Poland", "plan": "family", "seats": 4, "monthly_price_eur": 18.5, "signup_date": "2021-03-14", '
    '"last_login": "2024-11-02", "payment_method": "card", "newsletter": true, "support_tickets": [{"id": 901, '
    '"subject": "cannot add a fourth device", "status": "closed"}, {"id": 1177, "subject": "invoice in wrong '
    'currency", "status": "open"}]}',
    "Recipe: lentil and pumpkin soup for four. Ingredients: one onion, two cloves of garlic, five hundred grams "
    "of pumpkin, two hundred grams of red lentils, one litre of vegetable stock, one teaspoon of ground cumin, "
    "half a teaspoon of smoked paprika, salt and pepper. Method: fry the chopped onion in a little oil until "
    "soft, then add the garlic and the spices. Add the pumpkin cut into cubes, the lentils and the stock. Simmer "
    "for twenty-five minutes, blend until smooth, and season to taste. Serve with bread and a spoon of yoghurt.",
    "Release notes for version 3.2 of the Tessel photo organiser. New: albums can now be shared with a link that "
    "expires after a chosen number of days. New: the search box finds photos by the camera model and the lens "
    "used. Changed: importing from a memory card skips files that are already in the library. Fixed: the map "
    "view no longer freezes when more than ten thousand photos have locations. Fixed: exporting a slideshow to "
    "video keeps the original order of the photos. Known issue: face grouping is slower on older laptops.",
    "The infrastructure team met on Tuesday. The nightly backup job failed twice last week because the storage "
    "volume filled up. Bilal will add an alert at eighty percent use and double the size of the volume. The "
    "staging cluster still runs the old load balancer; Chen will move it to the new one before the end of the "
    "month. Handover notes for on-call shifts are often missing, so Dorota will write a short template and share "
    "it with the team. Ana will book a room for next week's review of the incident on the fourteenth.",
)
NOVEL_QUESTIONS = (
    "Explain why the sky is blue.",
    "How does a bicycle stay upright?",
    "What causes the seasons on Earth?",
    "Why do cats purr?",
    "Explain how a rainbow forms.",
    "What is the difference between weather and climate?",
)
RANDOM_PROMPT_LEN = 64
WORKLOADS = ("copy", "novel", "random")
SPEC_COUNTERS = ("spec_verify_passes", "spec_verify_requests", "spec_draft_tokens", "spec_accepted_tokens")
COUNTERS = ("forward_passes", "decode_passes", "decode_tokens", *SPEC_COUNTERS)


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[Any]  # chat-formatted text (str) or token ids (list[int])
    params: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One timed pass over a workload on one engine."""

    wall_s: float
    output_ids: list[list[int]]
    counters: dict[str, int]  # deltas of COUNTERS over the pass

    @property
    def output_tokens(self) -> int:
        return sum(len(ids) for ids in self.output_ids)


def _chat(engine: Any, contents: list[str]) -> list[Any]:
    return [engine.apply_chat_template([{"role": "user", "content": c}]) for c in contents]


def make_workload(engine: Any, name: str, n: int, max_new_tokens: int, seed: int = 0) -> Workload:
    params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": 0}
    if name == "copy":
        texts = [f"{COPY_INSTRUCTION}\n\n{COPY_TEXTS[i % len(COPY_TEXTS)]}" for i in range(n)]
        return Workload(name, _chat(engine, texts), params)
    if name == "novel":
        return Workload(name, _chat(engine, [NOVEL_QUESTIONS[i % len(NOVEL_QUESTIONS)] for i in range(n)]), params)
    rng = random.Random(seed)
    vocab = engine.runner.vocab_size
    prompts = [[rng.randrange(100, vocab) for _ in range(RANDOM_PROMPT_LEN)] for _ in range(n)]
    return Workload(name, prompts, {**params, "ignore_eos": True})


def _generate(engine: Any, prompts: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    key = "input_ids" if isinstance(prompts[0], list) else "prompt"
    return engine.generate(**{key: prompts, "sampling_params": params})


def _counters(engine: Any) -> dict[str, int]:
    stats = engine.get_stats()
    return {name: int(stats.get(name, 0)) for name in COUNTERS}


def timed_run(engine: Any, work: Workload, batch: int) -> Run:
    """All of the workload's requests, `batch` per `generate` call, from an empty prefix cache."""
    engine.flush_cache()
    before = _counters(engine)
    start = time.perf_counter()
    outputs: list[list[int]] = []
    for i in range(0, len(work.prompts), batch):
        outputs += [list(out["output_ids"]) for out in _generate(engine, work.prompts[i : i + batch], work.params)]
    wall = time.perf_counter() - start
    after = _counters(engine)
    return Run(wall, outputs, {k: after[k] - before[k] for k in COUNTERS})


def first_mismatch(a: list[list[int]], b: list[list[int]]) -> dict[str, int] | None:
    """The first prompt whose outputs differ and the first token index where they do; None if identical."""
    for prompt, (x, y) in enumerate(zip(a, b)):
        if x != y:
            token = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
            return {"prompt": prompt, "token": token, "off_len": len(x), "on_len": len(y)}
    return None


def summarize(name: str, batch: int, off: Run, on: Run) -> dict[str, Any]:
    c = on.counters
    req = c["spec_verify_requests"]
    drafts = c["spec_draft_tokens"]
    mismatch = first_mismatch(off.output_ids, on.output_ids)
    return {
        "workload": name,
        "batch": batch,
        "requests": len(off.output_ids),
        "output_tokens_off": off.output_tokens,
        "output_tokens_on": on.output_tokens,
        "wall_s_off": round(off.wall_s, 4),
        "wall_s_on": round(on.wall_s, 4),
        "ratio_on_off": round(on.wall_s / off.wall_s, 4),
        "tok_s_off": round(off.output_tokens / off.wall_s, 2),
        "tok_s_on": round(on.output_tokens / on.wall_s, 2),
        "accepted_per_verify": round((c["spec_accepted_tokens"] + req) / req, 3) if req else None,
        "draft_acceptance": round(c["spec_accepted_tokens"] / drafts, 3) if drafts else None,
        "output_share_from_drafts": round(c["spec_accepted_tokens"] / on.output_tokens, 3),
        "forward_passes_off": off.counters["forward_passes"],
        "forward_passes_on": c["forward_passes"],
        "counters_on": c,
        "identical": sum(x == y for x, y in zip(off.output_ids, on.output_ids)),
        "first_mismatch": mismatch,
    }


def measure(engines: dict[str, Any], work: Workload, batch: int, repeats: int) -> dict[str, Any]:
    """Warm both engines on this workload, then `repeats` interleaved timed passes each; the fastest counts."""
    warm = {**work.params, "max_new_tokens": min(8, work.params["max_new_tokens"])}
    for engine in engines.values():
        _generate(engine, work.prompts[: min(batch, len(work.prompts))], warm)
    runs: dict[str, list[Run]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            runs[name].append(timed_run(engine, work, batch))
    off, on = (min(runs[name], key=lambda r: r.wall_s) for name in ("off", "on"))
    return summarize(work.name, batch, off, on)


def make_engines(args: argparse.Namespace) -> dict[str, Any]:
    from loomlm.runtime.engine import Engine

    common = {
        "dtype": args.dtype,
        "cpu_threads": args.threads,
        "max_total_tokens": max(args.batch, 1) * (512 + args.max_new_tokens + args.draft_tokens) + 1024,
    }
    engines = {"off": Engine(speculative_algorithm=None, **common)}
    try:
        engines["on"] = Engine(speculative_algorithm="NGRAM", speculative_num_draft_tokens=args.draft_tokens, **common)
    except BaseException:
        engines["off"].shutdown()
        raise
    return engines


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    engines = make_engines(args)
    try:
        device = str(engines["off"].runner.device)
        for engine in engines.values():
            engine.generate("Hello", {"max_new_tokens": 2})  # first-call costs out of the timings
        rows = []
        for name in args.workloads:
            work = make_workload(engines["off"], name, args.prompts, args.max_new_tokens)
            for batch in sorted({1, args.batch}):
                rows.append(measure(engines, work, batch, args.repeats))
    finally:
        for engine in engines.values():
            engine.shutdown()
    return rows, device


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["workload", "batch", "requests", "out tokens", "off s", "on s", "on/off", "off tok/s", "on tok/s"]
    headers += ["acc/verify", "draft acc", "from drafts", "passes off/on", "identical"]
    body = [
        [
            r["workload"],
            str(r["batch"]),
            str(r["requests"]),
            str(r["output_tokens_off"])
            + ("" if r["output_tokens_on"] == r["output_tokens_off"] else f"/{r['output_tokens_on']}"),
            f"{r['wall_s_off']:.2f}",
            f"{r['wall_s_on']:.2f}",
            f"{r['ratio_on_off']:.2f}x",
            f"{r['tok_s_off']:.1f}",
            f"{r['tok_s_on']:.1f}",
            _opt(r["accepted_per_verify"], ".2f"),
            _opt(r["draft_acceptance"], ".0%"),
            f"{r['output_share_from_drafts']:.0%}",
            f"{r['forward_passes_off']}/{r['forward_passes_on']}",
            f"{r['identical']}/{r['requests']}",
        ]
        for r in rows
    ]
    return text_table(headers, body)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench speculative", description=__doc__.split("\n")[0])
    p.add_argument("--draft-tokens", type=int, default=4, help="speculative_num_draft_tokens")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="both engines' dtype. float32: greedy outputs must be identical; in bfloat16 a verify pass and a "
        "decode step round differently, so greedy near-ties can part ways (same distribution, not the same bits)",
    )
    p.add_argument("--threads", type=int, default=None, help="cpu_threads of both engines")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=len(COPY_TEXTS), help="requests per workload")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: " + ", ".join(WORKLOADS))
    p.add_argument("--batch", type=int, default=1, help="also run N requests per generate call (N > 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per engine and row; the fastest counts")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown or not args.workloads or min(args.prompts, args.batch, args.repeats, args.max_new_tokens) < 1:
        parser.error(f"workloads must be among {','.join(WORKLOADS)}; counts must be >= 1 (got {unknown or argv})")
    load = os.getloadavg()[0]
    rows, device = run(args)
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores; device {device}; load average before {load:.2f}")
    print(
        f"n-gram speculation ({args.draft_tokens} draft tokens) against none, {args.dtype}, greedy, "
        f"max {args.max_new_tokens} "
        f"new tokens, best of {args.repeats}; acc/verify: tokens per verify pass per request"
    )
    print(table(rows))
    for r in rows:
        if r["first_mismatch"] is not None:
            print(f"outputs differ: {r['workload']} batch {r['batch']}: {r['first_mismatch']}")
    if args.json:
        print(json.dumps({"rows": rows, "settings": vars(args), "device": device, "load_average_before": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
