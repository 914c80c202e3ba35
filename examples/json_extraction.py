"""Information extraction into a pydantic model with a JSON-schema-constrained `gen`.

`sgl.gen("person", json_schema=Person)` compiles the model's JSON schema into a token mask that is
applied at every decoding step, so the output is always JSON of that shape: every field present, an
`age` that is an integer in range, strings no longer than their `max_length`. The program only has
to parse it: `Person.model_validate_json(state["person"])`. (`json_schema` also takes a schema dict
or JSON text; `regex=` and `dtype=int` constrain a gen the same way.)

The schema is compiled once and cached; later gens with the same schema reuse it. The one way the
output can fail to parse is being cut short by the token limit, which the finish reason tells.

    .venv/bin/python examples/json_extraction.py --max-tokens 96
"""

from __future__ import annotations

import argparse
from typing import Any

from _runner import example_parser, run_demo
from pydantic import BaseModel, Field

import loomlm as sgl


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=130)
    city: str = Field(max_length=40)
    occupation: str = Field(max_length=40)


TEXTS = [
    "Maria Gonzalez, 34, moved to Lisbon last spring to work as an architect.",
    "At 61, retired pilot Kenji Watanabe still flies gliders near his home in Sapporo every weekend.",
]


@sgl.function
def extract_person(s, text):
    s += sgl.system("You extract facts from text and reply with JSON only.")
    s += sgl.user(f"Extract the person's name, age, city and occupation from this text:\n{text}")
    s += sgl.assistant(sgl.gen("person", json_schema=Person))


def demo(args: argparse.Namespace) -> list[Person]:
    people = []
    for text in TEXTS:
        state = extract_person.run(text=text, temperature=0, max_new_tokens=args.max_tokens)
        raw = state["person"]
        if state.get_meta_info("person")["finish_reason"]["type"] == "length":
            print(f"Text:   {text}\nJSON:   {raw}  (cut short: raise --max-tokens)\n")
            continue
        person = Person.model_validate_json(raw)  # valid by construction
        print(f"Text:   {text}\nJSON:   {raw}\nParsed: {person!r}\n")
        people.append(person)
    return people


def main(argv: list[str] | None = None, backend: Any = None) -> list[Person]:
    parser = example_parser(__doc__)
    parser.add_argument(
        "--max-tokens", type=int, default=96, help="the most tokens of JSON (too few cuts the object short)"
    )
    return run_demo(demo, parser.parse_args(argv), backend)


if __name__ == "__main__":
    main()
