"""A multi-turn chat: several user/assistant turns in one program, then the conversation as messages.

`with s.user(): ...` and `with s.assistant(): ...` open a role, and everything appended inside the
block becomes that message (text, gens, selects alike); `sgl.user(text)` is the one-line form. Roles
are rendered with the model's own chat template. `s.messages()` returns the conversation in the
OpenAI format: `[{"role": "system", "content": ...}, {"role": "user", ...}, ...]`.

Each turn's prompt is the whole conversation so far, and only its new tokens are computed: the rest
was computed in the previous turn and is found in the prefix cache (the `cached` count printed below).

    .venv/bin/python examples/multi_turn_chat.py --max-tokens 32
"""

from __future__ import annotations

import argparse
from typing import Any

from _runner import example_parser, run_demo

import loomlm as sgl

QUESTIONS = [
    "Who wrote the play Romeo and Juliet?",
    "In which country was he born?",
    "Name another play he wrote.",
]


@sgl.function
def multi_turn_chat(s, questions):
    s += sgl.system("You are a helpful assistant. Answer in one short sentence.")
    for i, question in enumerate(questions):
        with s.user():
            s += question
        with s.assistant():
            s += sgl.gen(f"answer_{i}", stop="\n")


def demo(args: argparse.Namespace) -> sgl.ProgramState:
    questions = QUESTIONS[: args.turns]
    state = multi_turn_chat.run(questions=questions, temperature=0, max_new_tokens=args.max_tokens)
    for i, question in enumerate(questions):
        meta = state.get_meta_info(f"answer_{i}")
        print(f"User:      {question}")
        print(f"Assistant: {state[f'answer_{i}']}")
        print(f"           ({meta['prompt_tokens']} prompt tokens, {meta['cached_tokens']} of them cached)")

    print("\nstate.messages():")
    for message in state.messages():
        print(f"  {message}")
    return state


def main(argv: list[str] | None = None, backend: Any = None) -> sgl.ProgramState:
    parser = example_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=48, help="the most tokens per answer")
    parser.add_argument("--turns", type=int, default=len(QUESTIONS), help="how many questions to ask")
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
