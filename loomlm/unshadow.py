"""Keep the source tree's `kernels/` folder from standing in for the `kernels` distribution.

loomlm's Triton kernels live in a top-level `kernels/` folder of the repository, installed as
`loomlm.kernels`. transformers (5.x) depends on Hugging Face's `kernels` package and imports it by that
bare name. When the repository root is on `sys.path` (Python started there with `-m` or `-c`, or the tests
run as `python -m pytest`), the bare name finds the folder first and transformers fails with
"cannot import name ... from 'kernels'". Importing the real package once, with the root hidden from the
search, leaves it in `sys.modules`, where every later `import kernels` finds it.

An installed wheel has no such folder next to the package and nothing here runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
# Folders of the source tree that share a name with a distribution a dependency imports.
_SHADOWING = ("kernels",)


def _is_root(entry: str) -> bool:
    # "" on sys.path means the working directory
    return os.path.realpath(entry or os.curdir) == _ROOT


def import_shadowed_distributions() -> None:
    """Import each shadowed distribution from site-packages, once, before a dependency asks for it."""
    for name in _SHADOWING:
        if name in sys.modules or not os.path.isfile(os.path.join(_ROOT, name, "__init__.py")):
            continue
        if not any(_is_root(entry) for entry in sys.path):
            continue
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        saved = list(sys.path)
        sys.path[:] = [entry for entry in saved if not _is_root(entry)]
        try:
            importlib.import_module(name)
        except ImportError:
            # a broken install: transformers then judges it unavailable, as it would without loomlm
            pass
        finally:
            sys.path[:] = saved
