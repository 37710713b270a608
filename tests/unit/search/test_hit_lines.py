"""The TSV hit lines of `search`."""

from __future__ import annotations


def test_tsv_lines_keep_one_cell_per_field() -> None:
    """A tab or line break inside a value becomes a space; None is an empty cell."""
    from neimsctl.cli.search import _tsv_line

    assert _tsv_line([1, "x y", None, 0.5]) == b"1\tx y\t\t0.5\n"
    assert _tsv_line(["t\tab", "two\nlines", "cr\r", -3]) == b"t ab\ttwo lines\tcr \t-3\n"


def test_no_character_that_splitlines_breaks_at_is_left_in_a_cell() -> None:
    """A cp1252 name read as latin-1 ('...' is U+0085) or a JSONL name with U+2028, VT, FF or FS
    split a hit line for str.splitlines() and the readers that follow it."""
    from neimsctl.cli.search import _tsv_line

    odd = "x\x0by\x0cz\x1c\x1d\x1e\x85\u2028\u2029w"
    line = _tsv_line([odd, "Bis(2-ethylhexyl)\x85 phthalate"])
    assert line.decode().splitlines() == [line.decode().rstrip("\n")]
    assert line == ("x y z" + " " * 6 + "w\tBis(2-ethylhexyl)  phthalate\n").encode()
