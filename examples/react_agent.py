"""A ReAct agent: the model reasons and picks tools, the program runs them and feeds back the result.

Each step the model writes a `Thought:`, then an `Action:` chosen with `sgl.select` among the tool
names (so it can only name a real tool), then the tool's input, constrained to what the tool accepts:
a regex allows only arithmetic for the calculator, a `select` only known countries for the lookup.
The program reads the action back (`s["action_0"]` waits for it), calls the tool in Python, and
appends `Observation: <result>` before the next step. The loop ends at the `finish` action or after
`--max-steps` steps.

This is ordinary Python control flow around gens: program state persists across steps, and every
step's prompt extends the previous one, so each step only computes its new tokens (the rest is in the
prefix cache). The default model is tiny (135M parameters): the few-shot prompt keeps it on track
for simple questions, not for multi-step reasoning.

    .venv/bin/python examples/react_agent.py --question "What is (15 + 9) / 4?" --max-steps 3
"""

from __future__ import annotations

import argparse
import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _runner import example_parser, run_demo

import loomlm as sgl

# ---- tools: plain Python functions from text to text ------------------------------------------------
_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculator(expression: str) -> str:
    """Evaluate + - * / and parentheses over numbers (walks the syntax tree; never calls eval)."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"unsupported expression: {ast.unparse(node)}")

    try:
        result = value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"
    return f"{result:g}" if isinstance(result, float) else str(result)


CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa"}


def capital(country: str) -> str:
    return CAPITALS.get(country.strip(), f"error: unknown country {country!r}")


TOOLS = {"calculator": calculator, "capital": capital}
ACTIONS = [*TOOLS, "finish"]

PROMPT = """Answer the question using the tools.
calculator: evaluates an arithmetic expression, e.g. 2 * (3 + 4)
capital: gives the capital city of a country
finish: gives the final answer

Question: What is the capital of Italy?
Thought: This question asks for a capital city, so I use the capital tool.
Action: capital
Action Input: Italy
Observation: Rome
Thought: The capital of Italy is Rome.
Action: finish
Action Input: Rome

Question: What is 12 * 5 - 7?
Thought: This question asks for a calculation, so I use the calculator.
Action: calculator
Action Input: 12 * 5 - 7
Observation: 53
Thought: 12 * 5 - 7 is 53.
Action: finish
Action Input: 53

"""


@dataclass(frozen=True)
class ToolCall:
    tool: str
    argument: str
    observation: str


@sgl.function
def react_agent(s, question, max_steps=4):
    s += PROMPT + f"Question: {question}\n"
    calls = []
    for step in range(max_steps):
        s += "Thought:" + sgl.gen(f"thought_{step}", stop="\n", max_tokens=40) + "\n"
        s += "Action: " + sgl.select(f"action_{step}", choices=ACTIONS) + "\n"
        action = s[f"action_{step}"]  # waits for the select: the next step depends on it
        if action == "finish":
            s += "Action Input:" + sgl.gen("answer", stop="\n", max_tokens=24) + "\n"
            break
        if action == "calculator":  # numbers, operators, parentheses, then end of line
            s += "Action Input: " + sgl.gen(f"input_{step}", regex=r"[-(0-9][-+*/(). 0-9]{0,40}\n")
        else:  # only countries the lookup knows
            s += "Action Input: " + sgl.select(f"input_{step}", choices=list(CAPITALS)) + "\n"
        argument = s[f"input_{step}"].strip()
        observation = TOOLS[action](argument)
        calls.append(ToolCall(action, argument, observation))
        s += f"Observation: {observation}\n"
    return calls  # the state's ret_value


def demo(args: argparse.Namespace) -> list[sgl.ProgramState]:
    states = []
    for question in args.question or ["What is 23 * 47 + 12?", "What is the capital of Japan?"]:
        state = react_agent.run(question=question, max_steps=args.max_steps, temperature=0)
        print(state.text()[len(PROMPT) :].rstrip())  # the agent's transcript
        for call in state.ret_value:
            print(f"  -> called {call.tool}({call.argument!r}) = {call.observation}")
        answer = state["answer"].strip() if "answer" in state else f"(none within {args.max_steps} steps)"
        print(f"  => final answer: {answer}\n")
        states.append(state)
    return states


def main(argv: list[str] | None = None, backend: Any = None) -> list[sgl.ProgramState]:
    parser = example_parser(__doc__)
    parser.add_argument("--question", action="append", help="a question (repeat for more)")
    parser.add_argument("--max-steps", type=int, default=4, help="the most Thought/Action steps")
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
