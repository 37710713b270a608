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


def test_hits_written_column_by_column_are_the_lines_of_each_hit() -> None:
    """_tsv_lines (the hits of a batch as columns) writes what _tsv_line writes for each hit:
    numbers, None, and values with tabs or line breaks (then written hit by hit)."""
    from neimsctl.cli.search import _tsv_line, _tsv_lines

    plain = [["q1", "q1", "q2"], [1, 2, 1], [0.5, 0.25, None], ["a", "b", "c"]]
    odd = [["q1", "q\t2"], ["x\u2028y", "z"], [3, None]]
    lf = [["one\nline", "two"], [1, 2]]
    cr = [["a\rb", "c\x1e"], [True, 2.5]]
    for columns in (plain, odd, lf, cr):
        assert _tsv_lines(columns) == b"".join(_tsv_line(list(c)) for c in zip(*columns))
    assert _tsv_lines(plain) == b"q1\t1\t0.5\ta\nq1\t2\t0.25\tb\nq2\t1\t\tc\n"
    assert _tsv_lines([[], []]) == b""


def test_a_table_of_hits_from_two_libraries_names_each_hit_by_its_own(sample_msp, tmp_path) -> None:
    """Hits ranked over two libraries (an index on disk and the same spectra in memory): each hit's
    id, name and InChIKey are its own library's entry's; rows, Hit objects and columns agree."""
    import numpy as np

    from neimsctl.evaluate.matching import Score
    from neimsctl.io.rejects import Tally
    from neimsctl.search.build import build_index
    from neimsctl.search.run import SearchOptions, open_libraries, read_queries, search_batch, search_table

    build_index([sample_msp], tmp_path / "a.h5", Tally())
    libs = open_libraries([tmp_path / "a.h5", sample_msp], Tally())
    batch = next(read_queries([sample_msp], Tally(), batch=20))
    table = search_table(libs, batch, SearchOptions(Score(), top=4))
    assert set(table.library) == {0, 1} and len(table) == 80
    for lib, entry, hit_id, key in zip(table.library, table.entry, table.info["id"], table.info["inchikey"]):
        got = libs[lib].entries(np.array([entry]))
        assert (got["id"][0], got["inchikey"][0]) == (hit_id, key)
    rows = table.rows(Score())
    hits = search_batch(libs, batch, SearchOptions(Score(), top=4))
    assert rows == [[h.row(libs, Score()) for h in q] for q in hits]
    assert [r["rank"] for r in rows[0]] == [1, 2, 3, 4] and rows[0][0]["query_id"] == batch.records[0].id
    for lib in libs:
        lib.close()
