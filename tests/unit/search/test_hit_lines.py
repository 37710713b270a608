"""The TSV hit lines of `search`."""

from __future__ import annotations


def test_tsv_lines_keep_one_cell_per_field() -> None:
    """A tab or line break inside a value becomes a space; None is an empty cell."""
    from neimsctl.cli.search import _tsv_line

    fields = ("a", "b", "c", "d")
    assert _tsv_line({"a": 1, "b": "x y", "c": None, "d": 0.5}, fields) == b"1\tx y\t\t0.5\n"
    assert _tsv_line({"a": "t\tab", "b": "two\nlines", "c": "cr\r", "d": -3}, fields) == b"t ab\ttwo lines\tcr \t-3\n"
