"""What every example's `main(argv, backend)` shares: its command line, and where its demo runs.

    def main(argv=None, backend=None):
        parser = example_parser(__doc__)
        parser.add_argument(...)                      # the example's own options
        return run_demo(demo, parser.parse_args(argv), backend)

With `backend` (the tests share one engine across examples) the demo runs on it; otherwise on a fresh
in-process `sgl.Runtime()` on the default model, shut down when the demo returns. Not an example itself:
the leading underscore keeps it out of the examples the tests enumerate.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

import loomlm as sgl

T = TypeVar("T")


def example_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the example's docstring."""
    return argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)


def run_demo(demo: Callable[[argparse.Namespace], T], args: argparse.Namespace, backend: Any = None) -> T:
    if backend is not None:  # a backend the caller already runs
        sgl.set_default_backend(backend)
        return demo(args)
    with sgl.Runtime() as runtime:  # loads the default model; shut down when the block ends
        sgl.set_default_backend(runtime)
        return demo(args)
