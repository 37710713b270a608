"""``neimsctl search``: unknown spectra -> ranked library hits (parameters and glue only)."""

from __future__ import annotations

import contextlib
import re

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from neimsctl.cli._common import (InPaths, OutPath, Quiet, RejectsPath, ScoreName, Verbose, app, command,
                                  check_inputs_or_usage, eprint, finite, first_lines, input_pairs, once_each, output_pair,
                                  refuse_clobber,
                                  require_input_or_usage,
                                  setup_logging, usage_error)
from neimsctl.search.options import INTENSITY_POWER, MZ_POWER, POWER_MAX, POWER_MIN, cap_top, powers_misused

CMD = "search"


class SourceKind(str, Enum):
    """--source choices: neimsctl.search.options.SOURCES (tests/cli/test_search.py checks they agree)."""

    measured = "measured"
    predicted = "predicted"


class OutFormat(str, Enum):
    tsv = "tsv"
    jsonl = "jsonl"


@app.command(CMD)
def search_cli(
    queries: InPaths = None,
    library: Annotated[list[Path], typer.Option(
        "--library", "-l", help="A search index (neimsctl index), or a small library as MSP/JSONL "
        "(indexed in memory). Repeatable: hits of all libraries are ranked together.",
        metavar="LIB", show_default=False)] = [],  # noqa: B006
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Hits per query.")] = 10,
    score: Annotated[Optional[ScoreName], typer.Option(
        "--score", "-s", help="Similarity: cosine (m/z^a I^b, eval's), composite (NIST-style match "
        "factor 0-999, Stein & Scott 1994) or entropy (Li et al. 2021). Default: cosine.",
        show_default=False)] = None,
    reverse: Annotated[bool, typer.Option(
        "--reverse", help="Reverse search: only query peaks present in the library spectrum count "
        "(co-eluting peaks).")] = False,
    mz_power: Annotated[float, typer.Option("--mz-power", min=POWER_MIN, max=POWER_MAX, callback=finite,
                                            help="Exponent a of the cosine's m/z weight.")] = MZ_POWER,
    intensity_power: Annotated[float, typer.Option(
        "--intensity-power", min=POWER_MIN, max=POWER_MAX, callback=finite,
        help="Exponent b of the cosine's intensity weight.")] = INTENSITY_POWER,
    mass_filter: Annotated[Optional[float], typer.Option(
        "--mass-filter", min=0, callback=finite, help="Only entries within +-DA Da of the query's nominal mass (its MW, "
        "else from its SMILES/formula; queries without one are searched unfiltered).", metavar="DA")] = None,
    candidates: Annotated[Optional[Path], typer.Option(
        "--candidates", help="Search only these compounds: one InChIKey (or its first block), SMILES or InChI "
        "per line; entries that match no library entry are reported.", metavar="FILE")] = None,
    source: Annotated[Optional[SourceKind], typer.Option(
        "--source", help="Only measured or only predicted library entries.")] = None,
    fmt: Annotated[OutFormat, typer.Option("--format", "-O", help="tsv (with a header) or jsonl "
                                           "(one object per hit).")] = OutFormat.tsv,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Queries searched together (memory "
                                       "grows with it; lowered so that a batch holds at most 131,072 "
                                       "hits).")] = 1024,
    rejects: RejectsPath = None,
    out: OutPath = Path("-"),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Identify unknown spectra: the top hits of each query in measured and predicted libraries.

    Queries are MSP (any dialect: NIST, AMDIS, MS-DIAL, ChemStation exports) or JSONL records;
    each gets its --top best library entries, best first, as TSV or JSONL. Results are exact
    (the same hits as comparing every entry). A query without peaks, with non-numeric peaks or
    with m/z above 500 is reported with its file and line and skipped (exit 1). See
    neimsctl-search(1).
    """
    setup_logging(verbose, quiet)
    if not library:
        usage_error(CMD, "give at least one --library (an index from neimsctl index, or MSP/JSONL)")
    paths = require_input_or_usage(CMD, queries)
    inputs = [*paths, *library, *([candidates] if candidates else [])]
    if sum(str(p) == "-" for p in inputs) > 1:
        usage_error(CMD, "stdin ('-') can be given only once")
    check_inputs_or_usage(CMD, inputs)
    if powers_misused(score.value if score else None, mz_power, intensity_power):
        usage_error(CMD, "--mz-power/--intensity-power apply to --score cosine only")
    library = once_each(CMD, "--library", library, "searched once (twice would list every hit twice)")
    paths = once_each(CMD, "query file", paths, "searched once (twice would list its hits twice)")
    refuse_clobber(CMD, input_pairs(paths) + input_pairs(library, "--library")
                   + input_pairs([candidates] if candidates else [], "--candidates"),
                   [output_pair("-o", out)] + ([output_pair("--rejects", rejects)] if rejects else []))
    with command(CMD):
        import orjson

        from neimsctl.errors import shown
        from neimsctl.io.heap import reuse_freed_memory

        reuse_freed_memory()

        from neimsctl.evaluate.matching import DEFAULT_SCORE, Score
        from neimsctl.io.rejects import Tally
        from neimsctl.io.streams import open_out
        from neimsctl.search.run import (HIT_FIELDS, SearchOptions, allowed_count, open_libraries,
                                         read_candidates, read_queries, search_table)

        with open_out(rejects) if rejects is not None else contextlib.nullcontext() as sink:
            spec = Score(score.value if score else DEFAULT_SCORE, mz_power, intensity_power, reverse)
            lib_tally = Tally()
            lib_tally.sink = sink          # records of MSP/JSONL libraries that cannot be indexed
            libs = open_libraries([str(p) for p in library], lib_tally)
            if lib_tally.rejected and not quiet:
                eprint(CMD, "in-memory libraries", lib_tally.summary())
            if mass_filter is not None and not quiet:
                from neimsctl.search.build import no_mass_text

                for path, lib in zip(library, libs):
                    if (n := lib.n_without_mass):
                        eprint(CMD, f"warning: {path}: {no_mass_text(n, lib.n)}")
            opts = SearchOptions(spec, cap_top(top, sum(lib.n for lib in libs)), mass_filter, None,
                                 source.value if source else None)
            failed = False
            if candidates is not None:
                opts.candidates, problems = read_candidates(candidates, libs)
                for r in problems:      # reported, and in the rejects report with the queries'
                    eprint(CMD, f"{r.file}: line {r.line}: {r.record}: {r.detail}")
                    if sink is not None:
                        sink.write(orjson.dumps(r.to_json(), option=orjson.OPT_APPEND_NEWLINE))
                failed = bool(problems)
            if allowed_count(libs, opts) == 0 and not quiet:
                eprint(CMD, "warning: no library entry is " + " and ".join(
                    ([f"{opts.source}"] if opts.source else []) + (["of a --candidates compound"] if candidates else []))
                    + ": no query can have a hit")
            tally = Tally()
            warn = _reject_lines(verbose) if not quiet else None
            n_hits = n_without = n_unfiltered = n_same_id = 0
            ids: set[str] = set()
            first_same = first_without = None
            from neimsctl.cli._progress import Progress

            with open_out(out) as fout, Progress(CMD, list(paths), quiet=quiet, output=out) as bar:
                tally.sink = sink
                if fmt == OutFormat.tsv:
                    fout.write(("\t".join(HIT_FIELDS) + "\n").encode())
                # the hits of a batch are held until written (a few KB each): at most _MAX_HITS
                qbatch = max(1, min(batch, _MAX_HITS // opts.top))
                for qb in read_queries(paths, tally, batch=qbatch, warn=warn):
                    for r in qb.records:            # hits are grouped by query_id: a repeated one is said
                        if r.id in ids:
                            n_same_id += 1
                            first_same = first_same or r
                        else:
                            ids.add(r.id)
                    if mass_filter is not None:     # searched without the window: said in the summary
                        n_unfiltered += sum(r.mw is None for r in qb.records)
                    table = search_table(libs, qb, opts)
                    counts = table.counts()
                    tally.written += len(counts)
                    n_hits += len(table)
                    if 0 in counts:
                        n_without += counts.count(0)
                        first_without = first_without or qb.records[counts.index(0)]
                    columns = table.columns(spec)
                    fout.write(b"".join([orjson.dumps(dict(zip(HIT_FIELDS, row)), option=orjson.OPT_APPEND_NEWLINE)
                                         for row in zip(*columns)]) if fmt == OutFormat.jsonl else _tsv_lines(columns))
                    bar.update(tally)
                if sink is not None:    # a rejects report that cannot be written (a full disk)
                    sink.flush()        # stops the run before the hits are put in place
            if tally.read == 0:             # an empty export, or the wrong file: the table is empty
                eprint(CMD, "warning: no query record in " + ", ".join(map(str, paths)))
            if first_same is not None and not quiet:
                eprint(CMD, f"warning: {n_same_id:,} queries have the query_id of an earlier query (first: "
                       f"{shown(first_same.id)!r}, {_at(first_same)}): their hits are told apart only by their "
                       "order in the output")
            if not quiet:
                eprint(CMD, f"queries {tally.summary()}; {n_hits} hits"
                       + (f"; {n_without} queries without a hit (first: {shown(first_without.id)!r}, "
                          f"{_at(first_without)})" if first_without is not None else "")
                       + (f"; {n_unfiltered} queries of unknown mass (no MW, nor a SMILES or formula that gives "
                          "one) searched without --mass-filter" if n_unfiltered else "")
                       + f"; {sum(len(x) for x in libs)} library entries")
        if tally.rejected or lib_tally.rejected or failed:
            raise typer.Exit(1)


def _where(r) -> str:  # type: ignore[no-untyped-def]
    """Where a rejected query is: file, line (none for a shard's row), record name, else its id."""
    from neimsctl.errors import shown

    where = _at(r)
    if r.record:
        return f"{where}: record {shown(r.record)!r}"
    return f"{where}: id {shown(r.id)!r}" if r.id and not r.line else where


#: Hits held at once (--batch is lowered for a large --top: 600 queries x --top 1000 as JSONL took
#: 2.9 GB in one batch).
_MAX_HITS = 1 << 17

def _reject_lines(verbose: bool) -> Any:
    """Show the first ten rejected queries on stderr (all with -v), then one line that more are
    not shown, as msp2jsonl does (a MassBank self-search printed 99 of them)."""
    show = first_lines(CMD, verbose, "further rejected queries not shown (see --rejects FILE, or -v)")
    return lambda r: show(f"{_where(r)}: {r.reason}: {r.detail}; skipped")


def _at(rec: Any) -> str:
    """Where a query record is: its file, and line when it has one (a shard's rows have none)."""
    return f"{rec.file}" + (f": line {rec.line}" if rec.line else "")


#: Tabs and every character that some reader takes for a line end (str.splitlines: VT, FF, FS, GS,
#: RS, NEL U+0085, U+2028, U+2029) become spaces in a TSV cell.
_BREAKS = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_CLEAN = str.maketrans(dict.fromkeys(_BREAKS, " "))
_LINE_BREAK = re.compile(f"[{_BREAKS[1:]}]")
_OTHER_BREAK = re.compile(f"[{_BREAKS[2:]}]")      # a line break other than LF
_ASCII_BREAKS = _BREAKS[2:8].encode()      # CR, VT, FF, FS, GS, RS
_STR = {str}


def _tsv_lines(columns: list[list]) -> bytes:
    """Hits (a list of values per field, in the order of the header) as TSV lines, written
    column by column, then checked as a whole; the lines of :func:`_tsv_line` (the text of a
    value that holds a tab or a line break is written by it, line by line)."""
    if not columns or not columns[0]:
        return b""
    text = "\n".join(map("\t".join, zip(*map(_texts, columns)))) + "\n"
    data = text.encode()
    rows = len(columns[0])
    if data.count(b"\t") != rows * (len(columns) - 1) or data.count(b"\n") != rows \
            or len(data.translate(None, _ASCII_BREAKS)) != len(data) \
            or (not text.isascii() and _OTHER_BREAK.search(text)):
        return b"".join(_tsv_line(list(cells)) for cells in zip(*columns))
    return data


def _texts(column: list) -> list[str]:
    """The cells of one column as text (``None``: empty)."""
    kinds = set(map(type, column))
    if kinds == _STR:
        return column
    return list(map(str, column)) if type(None) not in kinds else ["" if v is None else str(v) for v in column]


def _tsv_line(cells: list) -> bytes:
    """One hit (its values in the order of the header) as a TSV line; tabs and line breaks
    (:data:`_BREAKS`) inside a value become spaces."""
    line = "\t".join(["" if v is None else v if v.__class__ is str else str(v) for v in cells])
    if line.count("\t") != len(cells) - 1 or _LINE_BREAK.search(line):
        line = "\t".join(map(_cell, cells))
    return (line + "\n").encode()


def _cell(value: object) -> str:
    if value is None:
        return ""
    return value.translate(_CLEAN) if isinstance(value, str) else str(value)
