"""Quickstart: ask the default model (SmolLM2-135M-Instruct, bundled) a chat question.

Run with `make run` (or `.venv/bin/python examples/quickstart.py`).
"""

import loomlm


def main() -> None:
    with loomlm.Engine() as engine:
        messages = [
            {"role": "system", "content": "You are a concise, helpful assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
        ]
        prompt = engine.apply_chat_template(messages)
        print("Q:", messages[-1]["content"])
        print("A: ", end="", flush=True)
        meta = {}
        for chunk in engine.generate(prompt, {"max_new_tokens": 64, "temperature": 0}, stream=True):
            print(chunk["text"], end="", flush=True)
            meta = chunk["meta_info"]
        print()
        print(f"({meta['prompt_tokens']} prompt tokens, {meta['completion_tokens']} generated, "
              f"finish: {meta['finish_reason']['type']})")


if __name__ == "__main__":
    main()
