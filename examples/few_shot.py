"""Few-shot question answering where the model picks its answer from a list with `sgl.select`.

The prompt shows a few solved questions, then asks a new one. Instead of letting the model write any
text, `sgl.select("answer", choices=[...])` scores every choice as a continuation of the prompt and
appends the best one, so the answer is always one of the choices. All the choices are scored in one
batched forward pass after the prompt, which is computed once and then read from the prefix cache.

How "best" is decided is the choices method:

* `sgl.token_length_normalized` (default): highest mean log-probability per token;
* `sgl.greedy_token_selection`: highest first-token log-probability (ties go to the next token);
* `sgl.unconditional_likelihood_normalized`: how much more likely the choice is after the prompt
  than on its own (corrects for choices that are likely anywhere).

    .venv/bin/python examples/few_shot.py --choices-method greedy_token_selection
"""

from __future__ import annotations

import argparse
from typing import Any

from _runner import example_parser, run_demo

import loomlm as sgl

# Solved examples shown to the model before every question (the "shots").
EXAMPLES = [
    ("Which gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean"),
    ("Which metal is liquid at room temperature?", "mercury"),
]

# Questions to ask, each with the answers the model may choose from.
QUESTIONS = [
    ("Which planet is known as the Red Planet?", ["Venus", "Mars", "Jupiter", "Saturn"]),
    ("What is the capital of Japan?", ["Beijing", "Seoul", "Tokyo", "Bangkok"]),
    ("How many legs does a spider have?", ["six", "eight", "ten", "four"]),
]

METHODS = {
    "token_length_normalized": sgl.token_length_normalized,
    "greedy_token_selection": sgl.greedy_token_selection,
    "unconditional_likelihood_normalized": sgl.unconditional_likelihood_normalized,
}


@sgl.function
def few_shot_qa(s, question, choices, choices_method=sgl.token_length_normalized):
    s += "Answer each question in a few words.\n\n"
    for q, a in EXAMPLES:
        s += f"Question: {q}\nAnswer: {a}\n\n"
    s += f"Question: {question}\nAnswer: "
    s += sgl.select("answer", choices=choices, choices_method=choices_method)
    s += "\n"


def compared_scores(meta: dict[str, Any], method_name: str) -> list[float]:
    """The per-choice scores the method took the argmax of, from the decision's meta info."""
    if method_name == "unconditional_likelihood_normalized":
        return meta["normalized_unconditional_prompt_logprobs"]
    if method_name == "greedy_token_selection":
        return [row[0] for row in meta["greedy_logprob_matrix"]]  # first-token logprobs
    return meta["normalized_prompt_logprobs"]  # mean logprob per token


def demo(args: argparse.Namespace) -> list[sgl.ProgramState]:
    method = METHODS[args.choices_method]
    states = []
    for question, choices in QUESTIONS[: args.num_questions]:
        state = few_shot_qa.run(question=question, choices=choices, choices_method=method)
        scores = compared_scores(state.get_meta_info("answer"), args.choices_method)
        print(f"Q: {question}\nA: {state['answer']}")
        print("   " + ", ".join(f"{c}: {v:.2f}" for c, v in zip(choices, scores)) + "\n")
        states.append(state)
    return states


def main(argv: list[str] | None = None, backend: Any = None) -> list[sgl.ProgramState]:
    parser = example_parser(__doc__)
    parser.add_argument("--choices-method", choices=sorted(METHODS), default="token_length_normalized")
    parser.add_argument("--num-questions", type=int, default=len(QUESTIONS))
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
