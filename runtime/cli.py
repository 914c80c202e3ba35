"""`loomlm generate "prompt"`: one generation from the command line (also `python -m loomlm`);
`loomlm serve`: the HTTP server (`runtime/server/launch.py`)."""

from __future__ import annotations

import argparse
import sys

from loomlm.runtime.arg_parser import add_engine_arguments, engine_config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loomlm", description="loomlm command-line interface")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a completion for a prompt")
    gen.add_argument("prompt", help="the prompt text (the user message with --chat)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", default=None, help="system message (with --chat)")
    gen.add_argument("--no-stream", action="store_true", help="print the answer at the end only")
    add_engine_arguments(gen)
    from loomlm.runtime.server.launch import add_server_arguments

    add_server_arguments(sub.add_parser("serve", help="serve a model over HTTP (SGLang's native API and OpenAI's)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from loomlm.runtime.server.launch import serve

        return serve(args)
    from loomlm.runtime.engine import Engine  # heavy imports after argument errors are reported
    from loomlm.runtime.sampling_params import SamplingParams

    params = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    try:  # every argument checked before the model loads (seconds)
        config = engine_config_from_args(args)
        SamplingParams.from_dict(params)
    except ValueError as exc:
        print(f"loomlm: {exc}", file=sys.stderr)
        return 2
    try:
        engine = Engine(**{k: v for k, v in vars(config).items()})
    except ValueError as exc:
        print(f"loomlm: {exc}", file=sys.stderr)
        return 2
    try:
        prompt = args.prompt
        if args.chat:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            prompt = engine.apply_chat_template(messages + [{"role": "user", "content": prompt}])
        if args.no_stream:
            print(engine.generate(prompt, params)["text"])
        else:
            for chunk in engine.generate(prompt, params, stream=True):
                print(chunk["text"], end="", flush=True)
            print()
    except ValueError as exc:
        print(f"loomlm: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
