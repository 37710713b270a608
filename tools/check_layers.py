#!/usr/bin/env python3
"""Check the package's layering: a module imports only its own layer or lower ones.

io (0) -> chem (1) -> nn, models, data (2) -> train (3) -> cli (4); nothing imports cli.
Also: chem/ never imports torch. Exit 1 and list the offending imports otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "neimsctl"
LAYER = {"io": 0, "chem": 1, "nn": 2, "models": 2, "data": 2, "train": 3, "cli": 4}
NO_TORCH = {"io", "chem"}


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = rel.parts[0] if len(rel.parts) > 1 else None
        for lineno, mod in imported(ast.parse(path.read_text(), str(path))):
            parts = mod.split(".")
            if parts[0] in ("torch", "torch_geometric") and own in NO_TORCH:
                bad.append(f"{rel}:{lineno}: {own}/ must not import {mod}")
            if parts[0] != "neimsctl" or len(parts) < 2 or parts[1] not in LAYER:
                continue
            target = parts[1]
            if target == "cli" and own != "cli":
                bad.append(f"{rel}:{lineno}: nothing outside cli/ may import {mod}")
            elif own in LAYER and LAYER[target] > LAYER[own]:
                bad.append(f"{rel}:{lineno}: {own}/ (layer {LAYER[own]}) imports higher layer {mod}")
            elif own is None and target != "errors" and rel.name != "__init__.py":
                pass
    return bad


if __name__ == "__main__":
    found = violations()
    print("\n".join(found) if found else "layers ok", file=sys.stderr if found else sys.stdout)
    sys.exit(1 if found else 0)
