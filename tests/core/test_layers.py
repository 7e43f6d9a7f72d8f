"""core's import structure: every top-level module of core is placed in the import-linter layers
contract (run by the test command), and no two modules of core import each other in a cycle."""
from __future__ import annotations

import os
import sys

import grimp

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _layers() -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [m.strip() for layer in layers for m in layer.split("|")]


def test_every_core_module_is_in_a_layer():
    top = {n[:-3] if n.endswith(".py") else n for n in os.listdir(os.path.join(ROOT, "core"))
           if (n.endswith(".py") and n != "__init__.py") or os.path.isfile(os.path.join(ROOT, "core", n, "__init__.py"))}
    placed = {m.removeprefix("core.") for m in _layers()}
    assert top - placed == set(), f"core modules missing from the layers contract: {sorted(top - placed)}"


def test_no_import_cycles_between_core_modules():
    g = grimp.build_graph("core", include_external_packages=False)
    top = {m for m in g.modules if m.count(".") == 1}
    for m in top:
        if g.find_children(m):
            g.squash_module(m)
    cycles = []
    for a in sorted(top):
        for b in g.find_modules_directly_imported_by(a):
            if b != a and b in top and g.chain_exists(importer=b, imported=a):
                cycles.append((a, b))
    assert not cycles, f"import cycles in core: {cycles}"
