"""iter_items: the one reader of featurize's and predict's molecule inputs (SMILES, JSONL, SDF)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from neimsctl.errors import InputError, StrictStop
from neimsctl.io.inputs import INPUT_FORMATS, Item, iter_items, sniff_format
from neimsctl.io.streams import open_in

MOL = b"""ethanol
  RDKit          2D

  3  2  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0
    1.2990    0.7500    0.0000 C   0  0
    2.5981   -0.0000    0.0000 O   0  0
  1  2  1  0
  2  3  1  0
M  END
"""


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_smiles_lines_skip_blank_and_comment_lines_and_number_across_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.smi", b"# header\nCCO ethanol\n\n  c1ccccc1  \n")
    b = _write(tmp_path / "b.smi", b"CCN\n")
    items = list(iter_items([a, b]))
    assert items == [Item(0, str(a), 2, "smi", b"CCO ethanol", 1), Item(1, str(a), 4, "smi", b"c1ccccc1", 2),
                     Item(2, str(b), 1, "smi", b"CCN", 1)]


def test_format_is_detected_per_file(tmp_path: Path) -> None:
    smi = _write(tmp_path / "a.smi", b"CCO\n")
    js = _write(tmp_path / "b.jsonl", b'\n\n\n\n\n{"id": "x", "smiles": "CCO"}\n')   # past 4 blank lines
    sdf = _write(tmp_path / "c.sdf", MOL + b"$$$$\n" + MOL + b"$$$$\n")
    kinds = [(it.kind, it.line) for it in iter_items([smi, js, sdf])]
    assert kinds == [("smi", 1), ("jsonl", 6), ("sdf", 1), ("sdf", 12)]
    assert [it.ordinal for it in iter_items([smi, js, sdf])] == [0, 1, 2, 3]


def test_an_msp_library_is_named_not_read_as_smiles(tmp_path: Path) -> None:
    """``featurize lib.msp`` / ``predict lib.msp`` made one unparsable_smiles reject per line
    (2,122 for the bundled sample) and an empty output: one line saying what to do instead."""
    msp = _write(tmp_path / "lib.msp", b"\nNAME: caffeine\nNum Peaks: 1\n194 999\n")
    with pytest.raises(InputError, match=r"lib.msp: an MSP spectral library .*neimsctl msp2jsonl"):
        list(iter_items([msp]))
    assert sniff_format([b"Name:x\n"]) == "msp" and sniff_format([b"CCO Name: x\n"]) == "smi"
    assert [it.kind for it in iter_items([msp], input_format="smi")][0] == "smi"   # as told


def test_an_hdf5_shard_or_a_zblock_stream_is_named_not_read_as_smiles(tmp_path: Path) -> None:
    """``featurize feats.h5`` read each line of the shard as a SMILES (41 rejects of binary text
    for a 17-row shard); ``featurize feats.zst`` (a zblock stream) found a line RDKit took for a
    molecule and wrote it. One line naming the file and what it is, for predict too."""
    h5 = _write(tmp_path / "f.h5", b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    zb = _write(tmp_path / "f.zst", b"NZBK\x01H\x00\x00" + b"{}\n" + b"\x00C\nCCO\n")
    for path, what in ((h5, "an HDF5 file"), (zb, "a zblock feature stream")):
        with pytest.raises(InputError, match=rf"{path.name}: {what}.*, not molecules \(JSONL records, SMILES lines\)"):
            list(iter_items([path], formats=("jsonl", "smi")))
    with pytest.raises(InputError, match=r"f.h5.gz: an HDF5 file .*SDF\)"):
        list(iter_items([_write(tmp_path / "f.h5.gz", gzip.compress(h5.read_bytes()))]))
    assert [it.raw for it in iter_items([zb], input_format="smi")][-1] == b"CCO"   # as told


@pytest.mark.parametrize("magic, what", [(b"BZh91AY&SY", "bzip2-compressed"), (b"\xfd7zXZ\x00\x00", "xz-compressed"),
                                         (b"PK\x03\x04\x14\x00", "a ZIP archive")])
def test_bzip2_xz_and_zip_inputs_are_named_not_read_as_text(tmp_path: Path, magic: bytes, what: str) -> None:
    """``msp2jsonl lib.msp.bz2`` rejected its compressed bytes as binary_garbage; ``predict
    smiles.xlsx`` each line of the workbook as a SMILES: one line naming the file and what it is."""
    path = _write(tmp_path / "in.x", magic + bytes(range(256)))
    with pytest.raises(InputError, match=rf"in.x: {what}.*, which neimsctl does not read"):
        with open_in(path):
            pass


def test_sdf_records_split_at_dollars_and_keep_a_last_unterminated_one(tmp_path: Path) -> None:
    sdf = _write(tmp_path / "c.sdf", MOL + b"$$$$\n" + MOL)
    items = list(iter_items([sdf]))
    assert [it.raw for it in items] == [MOL, MOL] and items[1].line == 12
    assert list(iter_items([_write(tmp_path / "d.sdf", MOL + b"$$$$\n\n")])) == [
        Item(0, str(tmp_path / "d.sdf"), 1, "sdf", MOL, 1)]


def test_an_sdf_that_starts_with_blank_lines_is_detected_as_sdf(tmp_path: Path) -> None:
    """Blank lines before the first MOL block (some exporters write one) pushed the counts line
    past the four lines looked at: every line of the file was read as a SMILES and rejected."""
    sdf = _write(tmp_path / "lead.sdf", b"\n\n" + MOL + b"$$$$\n\n" + MOL)
    items = list(iter_items([sdf]))
    assert [it.kind for it in items] == ["sdf", "sdf"] and [it.raw for it in items] == [MOL, MOL]
    assert [it.line for it in items] == [3, 15]       # the lines of the MOL blocks' name lines
    nameless = MOL.replace(b"ethanol", b"", 1)        # a blank name line stays the name line
    sdf = _write(tmp_path / "nameless.sdf", b"\n" + nameless + b"$$$$\n" + nameless)
    assert [it.raw for it in iter_items([sdf])] == [nameless, nameless]


def test_featurize_formats_never_detect_sdf_and_an_explicit_format_wins(tmp_path: Path) -> None:
    sdf = _write(tmp_path / "c.sdf", MOL + b"$$$$\n")
    assert {it.kind for it in iter_items([sdf], formats=("jsonl", "smi"))} == {"smi"}
    smi = _write(tmp_path / "a.txt", b'{"not": "json lines"}\n')
    assert [it.kind for it in iter_items([smi], "smi")] == ["smi"]
    assert sniff_format([b"x\n", b"\n", b"\n", b"  3  2  0  0  0  0  0  0  0  0999 V2000\n"]) == "sdf"
    assert sniff_format([b"x\n", b"\n", b"\n", b"  3  2 V2000\n"], ("jsonl", "smi")) == "smi"
    assert sniff_format([]) == "smi" and set(INPUT_FORMATS) == {"smi", "jsonl", "sdf"}


def test_shards_keep_whole_input_ordinals_and_together_cover_it(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.smi.gz", gzip.compress(b"".join(b"C" * (i + 1) + b"\n" for i in range(10))))
    every = list(iter_items([src]))
    parts = [list(iter_items([src], shard=(k, 3))) for k in (1, 2, 3)]
    assert [it.ordinal for it in parts[1]] == [1, 4, 7]
    assert sorted((it for p in parts for it in p), key=lambda it: it.ordinal) == every
    sdf = _write(tmp_path / "c.sdf", (MOL + b"$$$$\n") * 3)
    assert [it.ordinal for it in iter_items([sdf], shard=(2, 2))] == [1]
    # nth: the record's place in its own file (1-based, as index and search number records)
    assert [(it.ordinal, it.nth) for it in iter_items([sdf, src], shard=(2, 3))] == [(1, 2), (4, 2), (7, 5),
                                                                                   (10, 8)]


def test_one_strict_stop_for_featurize_and_predict() -> None:
    from neimsctl.chem.featurize_run import run_featurize
    from neimsctl.chem.rowbuild import RowOptions
    from neimsctl.io.rejects import Tally

    class Sink:
        def append(self, block: dict) -> None:
            pass

    items = [Item(0, "x", 1, "smi", b"CCCCO"), Item(1, "x", 2, "smi", b"not_a_smiles")]
    with pytest.raises(StrictStop, match="line 2: unparsable_smiles"):
        run_featurize(iter(items), Sink(), Tally(), opts=RowOptions(), strict=True)
    assert issubclass(StrictStop, InputError)
    import neimsctl.chem.featurize_run as fr
    import neimsctl.predict.run as pr

    assert not hasattr(fr, "StrictStop") or fr.StrictStop is StrictStop
    assert pr.StrictStop is StrictStop


def test_cli_choices_are_the_formats_the_reader_knows() -> None:
    """The -I choices are spelled out in cli/ (so --help imports nothing heavy); they must be
    the formats iter_items reads (featurize: FEATURIZE_FORMATS)."""
    from neimsctl.chem.featurize_run import FEATURIZE_FORMATS
    from neimsctl.cli import featurize, predict

    assert {m.value for m in predict.InFmt} == set(INPUT_FORMATS)
    assert {m.value for m in featurize.InFmt} == set(FEATURIZE_FORMATS) < set(INPUT_FORMATS)
