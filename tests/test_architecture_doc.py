"""`docs/architecture.md` stays true: every file it names exists, and every module is on the map."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "architecture.md").read_text()
# Code blocks hold diagrams and code, not file names; their fences would also throw the backtick pairing off.
DOC = re.sub(r"```.*?```", "", PAGE, flags=re.S)
CODE_FOLDERS = ("loomlm", "lang", "runtime", "grammars", "kernels", "tools", "examples")
# `path/like/this.py` or `folder/` inside backticks, as the page writes file names.
NAMED = re.compile(r"`((?:[\w.]+/)+[\w.]*)`")


def test_every_named_path_exists():
    named = {m for m in NAMED.findall(DOC) if not m.startswith("../")}
    assert len(named) > 50
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_module_is_on_the_map():
    """A module is on the map when its path, or its file name within its folder's entry, is written."""
    quoted = set(re.findall(r"`([^`]+)`", DOC))
    missing = []
    for folder in CODE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if path.name in ("__init__.py", "__main__.py") and rel != "loomlm/__main__.py":
                continue
            if rel not in quoted and path.name not in quoted and rel not in DOC:
                missing.append(rel)
    assert not missing, f"modules missing from docs/architecture.md: {sorted(missing)}"
