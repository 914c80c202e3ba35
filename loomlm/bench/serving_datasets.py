"""Prompts of `python -m loomlm.bench serving`: seeded, made of plain English words, no tokenizer needed.

Lengths are in words (a word is one to two tokens for the usual tokenizers); the token counts that the
benchmark reports come from the server's `usage`. Each `Prompt` carries both shapes a server is asked
in: `text` for `/v1/completions` and `messages` for `/v1/chat/completions`.

* `random`: `input_len` random words each;
* `shared-prefix`: `num_groups` groups, each a long system prefix of `prefix_len` random words shared by
  the group's requests, then a short question of the request's own (SGLang's generated-shared-prefix
  workload: it measures what a radix/prefix cache saves); requests of the groups are shuffled together;
* `chat`: short conversations of one to three user turns (earlier turns answered), for `--endpoint chat`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATASETS = ("random", "shared-prefix", "chat")
QUESTION_WORDS = (8, 24)  # a shared-prefix question's word count range

WORDS = tuple(
    """
    time year people way day man thing woman life child world school state family student group country
    problem hand part place case week company system program question work government number night point
    home water room mother area money story fact month lot right study book eye job word business issue
    side kind head house service friend father power hour game line end member law car city community name
    president team minute idea kid body information back parent face others level office door health person
    art war history party result change morning reason research girl guy moment air teacher force education
    foot boy age policy music market sense nation plan college interest death experience effect use class
    control care field development role effort rate heart drug show leader light voice wife police mind
    price report decision son view relationship town road arm difference value building action model season
    society tax director position player record paper space ground form event official matter center couple
    site project activity star table need court oil situation cost industry figure street image phone data
    picture practice piece land product doctor wall patient worker news test movie north love support
    technology step baby computer type attention film tree source organization hair window evidence
    population river garden bridge engine signal bright quiet early simple green heavy open clear
    """.split()
)

_CHAT_OPENERS = (
    "Can you explain",
    "Tell me about",
    "Write a short note on",
    "What do you think of",
    "Give me three facts about",
    "Summarize the idea of",
)


@dataclass(frozen=True)
class Prompt:
    text: str  # the completions prompt
    messages: tuple[dict[str, str], ...]  # the same request as chat messages
    group: int | None = None  # shared-prefix: the prefix it shares


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def random_prompts(rng: random.Random, num_prompts: int, input_len: int) -> list[Prompt]:
    out = []
    for _ in range(num_prompts):
        text = _words(rng, input_len)
        out.append(Prompt(text, ({"role": "user", "content": text},)))
    return out


def shared_prefix_prompts(rng: random.Random, num_prompts: int, prefix_len: int, num_groups: int) -> list[Prompt]:
    prefixes = [f"Context {g}: {_words(rng, prefix_len)}." for g in range(num_groups)]
    out = []
    for i in range(num_prompts):
        g = i % num_groups
        question = f"Question {i}: {_words(rng, rng.randint(*QUESTION_WORDS))}?"
        messages = ({"role": "system", "content": prefixes[g]}, {"role": "user", "content": question})
        out.append(Prompt(f"{prefixes[g]}\n\n{question}", messages, g))
    rng.shuffle(out)
    return out


def chat_prompts(rng: random.Random, num_prompts: int) -> list[Prompt]:
    out = []
    for _ in range(num_prompts):
        messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
        turns = rng.randint(1, 3)
        for turn in range(turns):
            question = f"{rng.choice(_CHAT_OPENERS)} {_words(rng, rng.randint(2, 12))}?"
            messages.append({"role": "user", "content": question})
            if turn < turns - 1:
                messages.append({"role": "assistant", "content": f"Sure. {_words(rng, rng.randint(8, 32))}."})
        transcript = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
        out.append(Prompt(f"{transcript}\nAssistant:", tuple(messages)))
    return out


def make_prompts(
    dataset: str, num_prompts: int, *, input_len: int, prefix_len: int, num_groups: int, seed: int
) -> list[Prompt]:
    """`num_prompts` prompts of `dataset` (one of DATASETS), the same for the same arguments."""
    rng = random.Random(seed)
    if dataset == "random":
        return random_prompts(rng, num_prompts, input_len)
    if dataset == "shared-prefix":
        return shared_prefix_prompts(rng, num_prompts, prefix_len, num_groups)
    if dataset == "chat":
        return chat_prompts(rng, num_prompts)
    raise ValueError(f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})")
