"""No module writes its own do-nothing context manager: ``contextlib.nullcontext`` is the one."""

from __future__ import annotations

import ast
from pathlib import Path

import neimsctl

PACKAGE = Path(neimsctl.__file__).parent


def _does_nothing(fn: ast.FunctionDef) -> bool:
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Return) and
                                          (s.value is None or isinstance(s.value, ast.Constant)))
               for s in body)


def test_no_hand_written_null_context_managers() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
                if {"__enter__", "__exit__"} <= set(methods) and \
                        _does_nothing(methods["__enter__"]) and _does_nothing(methods["__exit__"]):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not found, f"use contextlib.nullcontext() instead of {found}"
