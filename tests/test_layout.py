"""Packaging and layering: one `loomlm` namespace, no bare `runtime`/`lang`/`kernels`, imports point down."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Which loomlm sub-packages each layer may import at module level.
ALLOWED = {
    # the top layer: benchmarks compare loomlm's layers with baselines, so they may import any of them
    "bench": {"bench", "lang", "runtime", "grammars", "kernels"},
    # runtime only lazily, through lang/backends (checked below); grammars for gen(dtype=...)'s regexes
    # and the process-wide settings, a leaf module in the package root (loomlm/global_config.py)
    "lang": {"lang", "runtime", "grammars", "global_config"},
    "runtime": {"runtime", "grammars", "kernels"},
    "grammars": {"grammars"},
    "kernels": {"kernels"},
}
# Each layer's folder: ROOT / layer, but for the benchmarks, which live in the package root's folder.
FOLDERS = {"bench": ROOT / "loomlm" / "bench"}


SOURCE_KERNELS = ROOT / "kernels" / "__init__.py"


def test_public_api_and_no_bare_names():
    code = (
        "import importlib.util, loomlm;"
        "assert all(importlib.util.find_spec(n) is None for n in ('runtime','lang','grammars'));"
        # a `kernels` may be Hugging Face's (a dependency of transformers 5), never the source folder
        f"assert getattr(importlib.util.find_spec('kernels'), 'origin', None) != {str(SOURCE_KERNELS)!r};"
        "assert {'Engine','SamplingParams','EngineConfig'} <= set(loomlm.__all__);"
        "import loomlm.runtime, loomlm.lang, loomlm.kernels, loomlm.grammars;"
        "print(loomlm.Engine.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "loomlm.runtime.engine"


def test_source_folders_do_not_shadow_distributions_from_the_repository_root():
    """Python started in the repository root sees kernels/ as a bare `kernels`; transformers 5 imports
    Hugging Face's package of that name, which must be the one it gets once loomlm is imported."""
    code = (
        "import loomlm, transformers.activations, sys;"
        "kernels = sys.modules.get('kernels');"
        f"assert kernels is None or not kernels.__file__.startswith({str(ROOT / 'kernels')!r}), kernels.__file__"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


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
        for path in FOLDERS.get(layer, ROOT / layer).rglob("*.py"):
            for target, top in _imports(path):
                if layer == "lang" and target == "runtime":
                    assert not top and "backends" in path.parts, f"{path} imports loomlm.runtime"
                    continue
                assert target in allowed, f"{path.relative_to(ROOT)} imports loomlm.{target}"


def _grammar_modules(path: pathlib.Path) -> list[str]:
    """Every `loomlm.grammars...` module a file imports (module level or lazily)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [name for name in found if name.startswith("loomlm.grammars")]


def test_runtime_and_lang_use_the_grammars_facade_only():
    """`from loomlm.grammars import ...`, never `loomlm.grammars.<module>`: its modules are free to move."""
    for layer in ("runtime", "lang"):
        for path in (ROOT / layer).rglob("*.py"):
            for name in _grammar_modules(path):
                assert name == "loomlm.grammars", f"{path.relative_to(ROOT)} imports {name}; use loomlm.grammars"


def test_grammars_facade_exports_and_imports_without_cycles():
    names = (
        "compile_regex",
        "compile_json_schema",
        "compile_choices",
        "compile_type",
        "json_schema_to_regex",
        "Vocabulary",
        "Guide",
        "GrammarError",
        "GrammarLimits",
        "GrammarCache",
        "GrammarSpec",
        "spec_from_params",
        "JumpPlan",
        "REJECTED",
    )
    code = (
        "import loomlm.grammars as g;"
        f"assert set({names!r}) <= set(g.__all__), set({names!r}) - set(g.__all__);"
        "assert all(hasattr(g, n) for n in g.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)
    # Each module imported first, in a fresh interpreter: an import cycle would fail one of them.
    for path in sorted((ROOT / "grammars").glob("*.py")):
        module = "loomlm.grammars" + ("" if path.stem == "__init__" else f".{path.stem}")
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd="/", check=True)


def test_benchmarks_live_only_in_loomlm_bench():
    """No layer below holds benchmark code (a `bench` folder or a `bench*.py` module)."""
    for layer in ("runtime", "lang", "grammars", "kernels"):
        for path in (ROOT / layer).rglob("*.py"):
            rel = path.relative_to(ROOT)
            assert not any(part.startswith("bench") for part in rel.parts[1:]), f"{rel}: benchmarks go in loomlm/bench"


def test_no_pickle_loading():
    for folder in ("runtime", "lang", "kernels", "grammars", "loomlm"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, path
