"""Tree of thought: fork the conversation at two levels, then join the branches back and pick one.

    question -> plan 0 -> answer 0.0, answer 0.1
             -> plan 1 -> answer 1.0, answer 1.1          -> the model picks the best answer

`s.fork(n)` copies the program state into `n` branches that run concurrently. Every branch starts with
the text so far, which is computed once: the fork prefills it, and the branches find it in the prefix
cache. `branches += expr` appends to every branch; `branches += lambda i: expr` gives branch `i` its
own. `branches.join()` waits for the branches and gathers each variable they set into a list in the
state they were forked from.

The branches sample with temperature 0.7 so that they differ; each gen gets a fixed `seed`, so a run
is still reproducible.

    .venv/bin/python examples/tree_of_thought.py --branches 3 --max-tokens 32
"""

from __future__ import annotations

import argparse
from typing import Any

from _runner import example_parser, run_demo

import loomlm as sgl


@sgl.function
def tree_of_thought(s, question, num_branches=2):
    s += sgl.system("You are a thoughtful assistant. Keep every reply to one or two sentences.")
    s += sgl.user(f"{question}\nBefore answering, describe in one sentence how you would approach it.")

    # Level 1: one branch per plan.
    plans = s.fork(num_branches)
    plans += lambda i: sgl.assistant(sgl.gen("plan", temperature=0.7, seed=i))

    # Level 2: each plan forks again into answers that follow it. (Forking a branch waits for its plan;
    # the other plans keep generating meanwhile.)
    answer_groups = []
    for plan in plans:
        plan += sgl.user("Good. Now answer the question in one or two sentences, following that approach.")
        answers = plan.fork(num_branches)
        answers += lambda i: sgl.assistant(sgl.gen("answer", temperature=0.7, seed=100 + i))
        answer_groups.append(answers)

    # Join back, innermost first: every plan branch gets plan["answer"] = [its answers], then the root
    # gets s["plan"] = [the plans] and s["answer"] = [[answers of plan 1], [answers of plan 2]].
    for answers in answer_groups:
        answers.join()
    plans.join()

    # Back in the root conversation: show the candidates and let the model pick one (a constrained choice).
    candidates = [a.strip() for group in s["answer"] for a in group]
    listing = "\n".join(f"{k}. {text}" for k, text in enumerate(candidates, 1))
    s += sgl.user(f"Here are some answers to the question:\n{listing}\nWhich answer is best? Reply with its number.")
    s += sgl.assistant(sgl.select("best", choices=[str(k) for k in range(1, len(candidates) + 1)]))


def demo(args: argparse.Namespace) -> sgl.ProgramState:
    # max_new_tokens is a default for every gen of the run (the gens above set only temperature and seed).
    state = tree_of_thought.run(question=args.question, num_branches=args.branches, max_new_tokens=args.max_tokens)
    print("Question:", args.question)
    k = 0
    for i, plan in enumerate(state["plan"]):
        print(f"\nPlan {i}: {plan.strip()}")
        for j, answer in enumerate(state["answer"][i]):
            k += 1
            print(f"  [{k}] answer {i}.{j}: {answer.strip()}")
    print(f"\nThe model prefers answer [{state['best']}].")
    return state


def main(argv: list[str] | None = None, backend: Any = None) -> sgl.ProgramState:
    parser = example_parser(__doc__)
    parser.add_argument("--question", default="How can a small town reduce traffic in its centre?")
    parser.add_argument("--branches", type=int, default=2, help="branches per fork (the tree has branches**2 answers)")
    parser.add_argument("--max-tokens", type=int, default=40, help="the most tokens per plan or answer")
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
