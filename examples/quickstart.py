"""Quickstart: a chat program written in loomlm's frontend language, with the answer streamed.

A program is a Python function decorated with `@sgl.function`. Its first argument, `s`, is the program
state: `s += ...` appends text, roles (`sgl.system`, `sgl.user`, `sgl.assistant`) and generation
calls (`sgl.gen`) to it, and `s["answer"]` reads back what a `gen` produced. Roles are rendered with
the model's own chat template.

`sgl.Runtime()` starts the inference engine in this process on the default model (SmolLM2-135M-Instruct,
bundled with the install); `make run` runs this file. Everything else in `examples/` follows the same
pattern, and `docs/frontend.md` documents the language.

    .venv/bin/python examples/quickstart.py --question "Why is the sky blue?" --max-tokens 48
"""

from __future__ import annotations

import argparse
from typing import Any

from _runner import example_parser, run_demo

import loomlm as sgl


@sgl.function
def chat(s, question):
    s += sgl.system("You are a concise, helpful assistant.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer"))  # max_tokens etc. come from run(...) below


def demo(args: argparse.Namespace) -> sgl.ProgramState:
    # stream=True: the program runs in the background and gens hand out text as it is decoded.
    # Sampling arguments given to run() are defaults for every gen of the program that does not set its
    # own: temperature=0 is greedy decoding (reproducible output), max_new_tokens caps the answer.
    state = chat.run(question=args.question, stream=True, temperature=0, max_new_tokens=args.max_tokens)
    print("Q:", args.question)
    print("A: ", end="", flush=True)
    for piece in state.text_iter("answer"):
        print(piece, end="", flush=True)
    print()

    meta = state.get_meta_info("answer")
    print(
        f"({meta['prompt_tokens']} prompt tokens, {meta['completion_tokens']} generated, "
        f"finish: {meta['finish_reason']['type']})"
    )
    print("\nThe conversation as chat messages:")
    for message in state.messages():
        print(f"  {message['role']:>9}: {message['content']}")
    return state


def main(argv: list[str] | None = None, backend: Any = None) -> sgl.ProgramState:
    parser = example_parser(__doc__)
    parser.add_argument("--question", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--max-tokens", type=int, default=64, help="the most tokens the answer may take")
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
