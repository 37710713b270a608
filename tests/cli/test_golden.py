"""The golden files (tests/golden/): fresh CLI output must equal the checked-in bytes.

``tools/make_golden.py`` runs the pipelines and normalises their outputs (its docstring says
how); these tests run it into a temporary directory once and compare every file, one test per
golden file. Regenerate with ``python tools/make_golden.py`` and review the diff.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.cli
REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_make_golden() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_golden", REPO_ROOT / "tools" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()
GOLDEN = make_golden.checked_in()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, neimsctl_exe: str) -> dict[str, bytes]:
    """Every golden file, generated now by the installed CLI."""
    return make_golden.generate(tmp_path_factory.mktemp("golden"), exe=neimsctl_exe)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_file(fresh: dict[str, bytes], name: str) -> None:
    assert name in fresh, f"{name} is checked in but no longer generated (python tools/make_golden.py)"
    same = make_golden.same(name, GOLDEN[name], fresh[name])
    assert same, (f"{name} differs from the golden file at "
                  f"{make_golden.first_difference(GOLDEN[name], fresh[name])}\n"
                  "if the change is intended: python tools/make_golden.py, and say why in the commit")


def test_same_set_of_files(fresh: dict[str, bytes]) -> None:
    assert GOLDEN, "tests/golden/ holds no golden files"
    assert sorted(fresh) == sorted(GOLDEN), make_golden.compare(GOLDEN, fresh)


def test_model_floats_compare_within_their_tolerance_only() -> None:
    name = "predict/records.jsonl"
    rec = b'{"id":"a","mw":180,"intensity":[184.056,1.159]}\n'
    assert make_golden.same(name, rec, rec.replace(b"184.056", b"184.057"))      # last digit
    assert not make_golden.same(name, rec, rec.replace(b"184.056", b"184.06"))    # a real change
    assert not make_golden.same(name, rec, rec.replace(b'"a"', b'"b"'))
    assert not make_golden.same(name, rec, rec.replace(b"180", b"181"))
    assert not make_golden.same(name, rec, rec + rec)
    assert not make_golden.same("predict/molecules.msp", b"1 2\n", b"1 3\n")   # byte-exact files


def test_compare_names_the_file_and_first_differing_line() -> None:
    old = {"a.jsonl": b'{"x":1}\n{"x":2}\n', "gone.txt": b"1\n"}
    new = {"a.jsonl": b'{"x":1}\n{"x":3}\n', "new.txt": b"1\n"}
    assert make_golden.compare(old, new) == [
        'a.jsonl: differs at line 2, column 6:\n  - {"x":2}\n  + {"x":3}',
        "gone.txt: checked in but no longer generated",
        "new.txt: generated but not checked in"]
    assert make_golden.compare(old, dict(old)) == []
