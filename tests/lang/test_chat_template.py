"""Role pieces read off the tokenizer's chat template reproduce the tokenizer's own rendering."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.lang.chat_template import ChatTemplate

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


def _conversations():
    turn = st.tuples(_text, _text).map(
        lambda qa: [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}]
    )
    return st.tuples(st.one_of(st.none(), _text), st.lists(turn, min_size=1, max_size=3)).map(
        lambda sys_turns: (
            ([{"role": "system", "content": sys_turns[0]}] if sys_turns[0] is not None else [])
            + [m for t in sys_turns[1] for m in t]
        )
    )


@settings(max_examples=60, deadline=None)
@given(_conversations())
def test_render_equals_the_tokenizers_template(tokenizer, messages):
    template = ChatTemplate.from_tokenizer(tokenizer)
    assert template.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_generation_prompt_is_the_assistant_prefix(tokenizer):
    template = ChatTemplate.from_tokenizer(tokenizer)
    messages = [{"role": "user", "content": "Hi"}]
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == template.render(messages) + template.prefix("assistant", first=False)
    assert template.stop == ("<|im_end|>",)


def test_tokenizer_without_template_gets_plain_roles():
    class NoTemplate:
        chat_template = None

    template = ChatTemplate.from_tokenizer(NoTemplate())
    assert template.render([{"role": "user", "content": "hi"}]) == "USER: hi\n"
