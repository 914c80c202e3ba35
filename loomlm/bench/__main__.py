"""`python -m loomlm.bench <name> [args]`: run one benchmark of this package (`loomlm/bench/<name>.py`)."""

from __future__ import annotations

import importlib
import sys

# Benchmark name -> module with a `main(argv) -> int`.
BENCHMARKS = {
    "export-hf": "loomlm.bench.export_hf",  # not a benchmark: the default model for peer servers
    "grammar": "loomlm.bench.grammar",
    "grammar-corpus": "loomlm.bench.grammar_corpus",
    "kernels": "loomlm.bench.kernels",
    "lowbit": "loomlm.bench.lowbit",
    "offline": "loomlm.bench.offline",
    "prefix": "loomlm.bench.prefix",
    "decode-stall": "loomlm.bench.decode_stall",
    "programs": "loomlm.bench.programs",
    "router": "loomlm.bench.router",
    "serving": "loomlm.bench.serving",
    "speculative": "loomlm.bench.speculative",
}


def usage() -> str:
    return (
        f"usage: python -m loomlm.bench {{{','.join(BENCHMARKS)}}} [args]\n"
        f"benchmarks: {', '.join(BENCHMARKS)} (add --help after a name for its options)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"{usage()}\nunknown benchmark {name!r}", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
