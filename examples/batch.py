"""Run one program over many inputs at once with `run_batch`.

`prog.run_batch([{"review": ...}, {"review": ...}, ...])` runs the program once per argument dict on a
thread pool and returns the finished states in the same order. The programs' gens reach the engine
concurrently and are decoded together in one continuously batched loop, which is much faster than
running them one after another.

Before dispatching, `run_batch` traces the program without a model to find the text every run starts
with (here the system prompt and the instructions, up to the first use of `review`), and computes it
once; every program then finds it in the prefix cache. `prog.trace().prefix` shows that text.

    .venv/bin/python examples/batch.py --max-tokens 16
"""

from __future__ import annotations

import argparse
from typing import Any

from _runner import example_parser, run_demo

import loomlm as sgl

REVIEWS = [
    "The battery lasts two full days and the screen is gorgeous. Best phone I have owned.",
    "Stopped working after a week and support never answered my emails.",
    "Comfortable chair, easy to assemble, and it looks great in my office.",
    "The soup was cold, the waiter was rude, and we waited an hour for the bill.",
    "Fast delivery and the shoes fit perfectly. I ordered a second pair.",
    "The hotel room smelled of smoke and the wifi never worked.",
]


@sgl.function
def review_analysis(s, review):
    s += sgl.system("You are a careful analyst of customer reviews.")
    with s.user():
        s += "Read the review, say whether it is positive or negative, then summarise it in a few words.\n"
        s += "Review: " + review
    with s.assistant():
        s += "Sentiment: " + sgl.select("sentiment", choices=["positive", "negative"]) + "\n"
        s += "Summary:" + sgl.gen("summary", stop="\n")


def demo(args: argparse.Namespace) -> list[sgl.ProgramState]:
    prefix = review_analysis.trace().prefix
    print(f"Shared prefix found by tracing ({len(prefix)} characters), computed once:\n{prefix!r}\n")

    arguments = [{"review": review} for review in REVIEWS[: args.num_reviews]]
    states = review_analysis.run_batch(arguments, progress_bar=True, temperature=0, max_new_tokens=args.max_tokens)
    for argument, state in zip(arguments, states):
        print(f"[{state['sentiment']:>8}] {argument['review']}\n           -> {state['summary'].strip()}")
    return states


def main(argv: list[str] | None = None, backend: Any = None) -> list[sgl.ProgramState]:
    parser = example_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=24, help="the most tokens per summary")
    parser.add_argument("--num-reviews", type=int, default=len(REVIEWS))
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
