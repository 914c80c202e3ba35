"""Packaging and layering: one `loomlm` namespace, no bare `runtime`/`lang`/`kernels`, imports point down."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Which loomlm sub-packages each layer may import at module level.
ALLOWED = {
    # runtime only lazily, through lang/backends (checked below); grammars for gen(dtype=...)'s regexes
    "lang": {"lang", "runtime", "grammars"},
    "runtime": {"runtime", "grammars", "kernels"},
    "grammars": {"grammars"},
    "kernels": {"kernels"},
}


def test_public_api_and_no_bare_names():
    code = ("import importlib.util, loomlm;"
            "assert all(importlib.util.find_spec(n) is None for n in ('runtime','lang','kernels','grammars'));"
            "assert {'Engine','SamplingParams','EngineConfig'} <= set(loomlm.__all__);"
            "import loomlm.runtime, loomlm.lang, loomlm.kernels, loomlm.grammars;"
            "print(loomlm.Engine.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "loomlm.runtime.engine"


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported loomlm sub-package, at module level?) for each import in a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "loomlm" and len(parts) > 1:
                found.append((parts[1], id(node) in top_level))
    return found


def test_layers_import_downward_only():
    for layer, allowed in ALLOWED.items():
        for path in (ROOT / layer).rglob("*.py"):
            for target, top in _imports(path):
                if layer == "lang" and target == "runtime" and "bench" in path.parts:
                    continue   # benchmarks sit above both layers (they compare loomlm with baselines)
                if layer == "lang" and target == "runtime":
                    assert not top and "backends" in path.parts, f"{path} imports loomlm.runtime"
                    continue
                assert target in allowed, f"{path.relative_to(ROOT)} imports loomlm.{target}"


def test_no_pickle_loading():
    for folder in ("runtime", "lang", "kernels", "grammars", "loomlm"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, path
