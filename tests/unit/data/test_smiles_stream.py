"""The streaming SMILES dataset: formats, hash split, featurization, order, sharding, skipping."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zstandard

from neimsctl.chem.graph import ATOM_FDIM, BOND_FDIM
from neimsctl.data.smiles_stream import (SmilesStream, StreamSpec, _shuffled, featurize_batch,
                                         read_smiles, split_part)
from neimsctl.errors import FormatError

# real MOSES molecules (first lines of ../shared/data/pretrain/moses_train.smi.zst)
MOSES = ["CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "CC(C)(C)C(=O)C(Oc1ccc(Cl)cc1)n1ccnc1",
         "Cc1c(Cl)cccc1Nc1ncccc1C(=O)OCC(O)CO", "Cn1cnc2c1c(=O)n(CC(O)CO)c(=O)n2C",
         "CC1Oc2ccc(Cl)cc2N(CC(O)CO)C1=O"]
ALIPHATIC = [f"C{'C' * (i % 7)}{'O' * (i % 3)}N" for i in range(60)]  # distinct small molecules


def _smi(path: Path, smiles: list[str]) -> Path:
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))
    return path


def test_read_smi_names_comments_header(tmp_path):
    p = tmp_path / "a.smi"
    p.write_text("smiles\n# a comment\n\nCCO ethanol\nc1ccccc1\tbenzene\nC(=O)O acetic acid\n")
    items = list(read_smiles(p))
    assert [(i.line, i.smiles, i.name) for i in items] == [
        (4, "CCO", "ethanol"), (5, "c1ccccc1", "benzene"), (6, "C(=O)O", "acetic acid")]


def test_a_tab_separated_name_with_blanks_leaves_the_smiles_whole(tmp_path):
    """'c1ccccc1<TAB>benzene ring' was cut at its first blank: the SMILES 'c1ccccc1\tbenzene'
    was rejected as unparsable, so pretraining lost every molecule of a SMILES<TAB>name list
    whose names have blanks (predict and featurize read the same file right)."""
    p = tmp_path / "a.tsv"
    p.write_text("SMILES\tName\nc1ccccc1\tbenzene ring\nCC(=O)O  \t acetic acid \nCCO\n")
    assert [(i.line, i.smiles, i.name) for i in read_smiles(p)] == [
        (2, "c1ccccc1", "benzene ring"), (3, "CC(=O)O", "acetic acid"), (4, "CCO", "")]


def test_read_compressed_jsonl_and_csv(tmp_path):
    z = tmp_path / "m.smi.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress("\n".join(MOSES).encode() + b"\n"))
    assert [i.smiles for i in read_smiles(z)] == MOSES
    j = tmp_path / "r.jsonl"
    j.write_text('{"id": "a", "smiles": "CCO"}\n{"id": "b", "smiles": null}\n')
    assert [(i.smiles, i.name) for i in read_smiles(j)] == [("CCO", "a"), ("", "b")]
    # PCQM4Mv2's layout: data.csv.gz with idx,smiles,homolumogap
    c = tmp_path / "data.csv.gz"
    c.write_bytes(gzip.compress(b"idx,smiles,homolumogap\n0,CCO,5.1\n1,\"c1ccccc1\",\n"))
    assert [(i.line, i.smiles, i.name) for i in read_smiles(c)] == [(2, "CCO", "0"),
                                                                    (3, "c1ccccc1", "1")]
    c2 = tmp_path / "x.csv"
    c2.write_text("id,SMILES_col\n7,CC\n")
    assert [i.smiles for i in read_smiles(c2, smiles_column="smiles_col")] == ["CC"]
    with pytest.raises(FormatError, match="no column"):
        list(read_smiles(c2, "csv"))
    with pytest.raises(FormatError, match="smiles-column"):
        list(read_smiles(_smi(tmp_path / "s.smi", MOSES), smiles_column="smiles"))


def test_lines_are_counted_from_the_top_and_a_csv_without_the_column_is_named(tmp_path):
    # blank lines before the first molecule shifted every reported line number by their count
    p = tmp_path / "b.smi"
    p.write_text("\n\nsmiles\nCCO\nxx\n")
    assert [(i.line, i.smiles) for i in read_smiles(p)] == [(4, "CCO"), (5, "xx")]
    c = tmp_path / "b.csv"
    c.write_text("\n\nidx,smiles\n0,CCO\n")
    assert [(i.line, i.smiles) for i in read_smiles(c)] == [(4, "CCO")]
    # a CSV without a smiles column was read as .smi: every line a rejected SMILES, then
    # "no valid molecule in the validation part"; now its header is named
    n = tmp_path / "n.csv"
    n.write_text("\nname,structure\na,CCO\n")
    with pytest.raises(FormatError, match=r"no column 'smiles' \(columns: name, structure\); use "
                                          "--smiles-column") as err:
        list(read_smiles(n))
    assert err.value.line == 2
    assert [i.smiles for i in read_smiles(n, smiles_column="structure")] == ["CCO"]


def test_split_is_stable_and_near_the_fractions():
    parts = [split_part(s, 42, (0.9, 0.1, 0.0)) for s in ALIPHATIC * 1 + MOSES]
    assert parts == [split_part(s, 42, (0.9, 0.1, 0.0)) for s in ALIPHATIC + MOSES]
    many = [f"C{i}" for i in range(20000)]  # hash inputs only; no parse needed for the split
    share = np.mean([split_part(s, 42, (0.9, 0.1, 0.0)) == 1 for s in many])
    assert 0.09 < share < 0.11
    assert [split_part(s, 7, (0.9, 0.1, 0.0)) for s in many[:200]] != \
        [split_part(s, 42, (0.9, 0.1, 0.0)) for s in many[:200]]


def test_featurize_batch_offsets_and_rejects():
    class It:
        def __init__(self, s):
            self.smiles = s

    batch, rejects = featurize_batch([It("CCO"), It("not a smiles"), It("c1ccccc1")])
    assert [r[1] for r in rejects] == ["unparsable_structure"]
    assert rejects[0][2] == "RDKit cannot parse SMILES 'not a smiles'"   # the detail (was none)
    assert batch.num_graphs == 2 and batch.x.shape == (9, ATOM_FDIM)
    assert batch.edge_attr.shape == (2 * 2 + 2 * 6, BOND_FDIM)
    assert batch.batch.tolist() == [0] * 3 + [1] * 6
    assert int(batch.edge_index[:, 4:].min()) == 3  # benzene's edges point past ethanol's atoms
    assert featurize_batch([It("")])[0] is None


def test_shuffle_buffer_is_a_permutation():
    import random

    out = list(_shuffled(iter(range(1000)), 64, random.Random(1)))
    assert sorted(out) == list(range(1000)) and out != list(range(1000))


def _keys(batches) -> list[tuple]:
    return [tuple(b.x.sum(dim=1).round(decimals=3).tolist()) for b in batches]


@pytest.fixture()
def spec(tmp_path) -> StreamSpec:
    return StreamSpec((str(_smi(tmp_path / "m.smi", ALIPHATIC)),), fractions=(0.8, 0.2, 0.0))


def test_pass_covers_the_train_part_in_a_seeded_order(spec):
    s = SmilesStream(spec, batch_size=8, seed=3, shuffle_buffer=16)
    e0 = list(s.batches(0))
    n_train = sum(1 for _ in spec.items(0))
    assert 0 < n_train < 60 and sum(b.num_graphs for b in e0) == n_train
    assert _keys(e0) == _keys(s.batches(0)) and _keys(e0) != _keys(s.batches(1))
    assert _keys(e0)[2:] == _keys(s.batches(0, skip=2))
    assert Counter(itertools.chain(*_keys(e0))) == Counter(itertools.chain(*_keys(s.batches(1))))


def test_workers_do_not_change_the_order(spec):
    one = SmilesStream(spec, batch_size=4, seed=3, num_workers=0, steps_per_epoch=5)
    two = SmilesStream(spec, batch_size=4, seed=3, num_workers=2, steps_per_epoch=5)
    assert _keys(one.batches(1)) == _keys(two.batches(1))
    assert _keys(one.batches(1, skip=3)) == _keys(two.batches(1, skip=3))


def test_step_epochs_are_consecutive_windows(spec):
    s = SmilesStream(spec, batch_size=4, seed=3, steps_per_epoch=3, grad_accum=2)
    assert len(s) == 6
    e0, e1, e2 = (list(s.batches(e)) for e in range(3))
    assert [len(e) for e in (e0, e1, e2)] == [6, 6, 6]
    endless = SmilesStream(spec, batch_size=4, seed=3, steps_per_epoch=18)
    assert _keys(e0 + e1 + e2) == _keys(endless.batches(0))  # passes follow one another


def test_ranks_split_the_batches_evenly(spec):
    s = SmilesStream(spec, batch_size=4, seed=3)
    full = _keys(s.batches(0))
    r0, r1 = _keys(s.batches(0, 0, 0, 2)), _keys(s.batches(0, 0, 1, 2))
    assert len(r0) == len(r1) == len(full) // 2
    assert r0 == full[0:2 * len(r0):2] and r1 == full[1:2 * len(r1):2]


def test_rejects_reported_once_in_the_first_pass(tmp_path):
    p = _smi(tmp_path / "bad.smi", ALIPHATIC[:10] + ["C1CC", "xyz"])
    seen = []
    s = SmilesStream(StreamSpec((str(p),), fractions=None), batch_size=5, steps_per_epoch=6,
                     on_rejects=seen.extend)
    batches = list(s.batches(0))  # 30 items = 2.5 passes over 12 lines
    assert len(batches) == 6 and 24 <= sum(b.num_graphs for b in batches) <= 26
    assert sorted((it.line, why) for it, why, _ in seen) == [(11, "unparsable_structure"),
                                                             (12, "unparsable_structure")]
    assert sorted(detail for *_, detail in seen) == ["RDKit cannot parse SMILES 'C1CC'",
                                                     "RDKit cannot parse SMILES 'xyz'"]


def test_read_smiles_every_line_end_convention(tmp_path):
    """pretrain's reader (a universal-newline TextIOWrapper): CR, CRLF, LF, mixed (issue 16)."""
    from neimsctl.data.smiles_stream import read_smiles

    path = tmp_path / "m.smi"
    path.write_bytes(b"CCO a\rc1ccccc1 b\r\nCCN c\nCCCl d\r")
    assert [(i.line, i.smiles, i.name) for i in read_smiles(path)] == [
        (1, "CCO", "a"), (2, "c1ccccc1", "b"), (3, "CCN", "c"), (4, "CCCl", "d")]
