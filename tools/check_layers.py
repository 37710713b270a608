#!/usr/bin/env python3
"""Check the package's layering: a module imports only its own layer or lower ones.

    base (neimsctl/__init__, errors, interrupts)
      -> io (0) -> chem (1) -> nn, models, data (2) -> predict, evaluate (3) -> train, search (4)
      -> cli, api (5)

Every module is checked, top-level ones included. Nothing imports `cli` or `api`; `predict` and
`evaluate` do not import each other; `io` and `chem` never import torch; the base modules import
no other module of the package (the package root re-exports `api` lazily). Exit 1 and list the offending imports otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "neimsctl"
BASE = {"__init__", "errors", "interrupts"}
LAYER = {"io": 0, "chem": 1, "nn": 2, "models": 2, "data": 2, "predict": 3, "evaluate": 3,
         "train": 4, "search": 4, "cli": 5, "api": 5}
TOP = {"cli", "api"}            # the user-facing surfaces: nothing imports them
APART = {frozenset({"predict", "evaluate"})}   # same layer, but neither imports the other
NO_TORCH = {"io", "chem"}


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def room(rel: Path) -> str:
    """The layer name of a module: its sub-package, or its own name for a top-level module."""
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def check(own: str, rel: Path, lineno: int, mod: str) -> str | None:
    if mod.startswith("."):
        return f"{rel}:{lineno}: relative import {mod}; import neimsctl.* by its full name"
    parts = mod.split(".")
    if parts[0] in ("torch", "torch_geometric") and own in NO_TORCH:
        return f"{rel}:{lineno}: {own}/ must not import {mod}"
    if parts[0] != "neimsctl":
        return None
    target = parts[1] if len(parts) > 1 else "__init__"
    if target in BASE:
        return None
    if own == "__init__" and target == "api":
        return None             # the package root re-exports the API lazily
    if own in BASE:
        return f"{rel}:{lineno}: base module {rel} may import no other module of the package ({mod})"
    if target not in LAYER:
        return f"{rel}:{lineno}: {mod} is in no layer (add it to tools/check_layers.py)"
    if target in TOP and own != target:
        return f"{rel}:{lineno}: nothing outside {target} may import {mod}"
    if frozenset({own, target}) in APART:
        return f"{rel}:{lineno}: {own}/ and {target}/ do not import each other ({mod})"
    if LAYER[target] > LAYER[own]:
        return f"{rel}:{lineno}: {own} (layer {LAYER[own]}) imports higher layer {mod}"
    return None


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = room(rel)
        if own not in LAYER and own not in BASE:
            bad.append(f"{rel}: module in no layer (add it to tools/check_layers.py)")
            continue
        for lineno, mod in imported(ast.parse(path.read_text(), str(path))):
            problem = check(own, rel, lineno, mod)
            if problem:
                bad.append(problem)
    return bad


if __name__ == "__main__":
    found = violations()
    print("\n".join(found) if found else "layers ok", file=sys.stderr if found else sys.stdout)
    sys.exit(1 if found else 0)
