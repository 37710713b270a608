"""One source for the spectrum and feature widths: io/spectrum.N_BINS and io/featblock's widths.

The shard layout, the featurizers, the featurize settings and the models' default configs all
read the same constants, and no module repeats the literal numbers in code.
"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import neimsctl
from neimsctl.io import featblock
from neimsctl.io.spectrum import N_BINS

PACKAGE = Path(neimsctl.__file__).parent
#: Literals that only their defining module may spell out (docstrings and comments may).
OWNED = {501: "io/spectrum.py", 6144: None}
#: Modules another change is rewriting (data/membench.py derives its row sizes from the layout).
PENDING = {"data/membench.py"}


def test_layout_reads_the_widths() -> None:
    assert featblock.N_BINS is N_BINS == 501
    assert featblock.ECFP_BYTES * 8 == featblock.ECFP_BITS == 4096
    assert featblock.STUDENT_DIM == featblock.ECFP_BITS + featblock.COUNT_BITS == 6144
    cols = featblock.row_columns("v1")
    assert cols["spectrum"][1] == (N_BINS,)
    assert cols["ecfp"][1] == (featblock.ECFP_BYTES,)
    assert cols["counts"][1] == (featblock.COUNT_BITS,)
    assert cols["morgan_counts"][1] == (featblock.MORGAN_COUNT_BITS,)
    ragged = featblock.ragged_columns("teacher")
    assert ragged["atom_x"][1] == (featblock.ATOM_FDIM,) and ragged["edge_attr"][1] == (featblock.BOND_FDIM,)


def test_featurizers_and_settings_use_the_widths() -> None:
    from rdkit import Chem

    from neimsctl.chem.features import StudentFeaturizer, TeacherFeaturizer, student_vectors
    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.rowbuild import RowOptions

    mol = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    s = StudentFeaturizer()(mol)
    assert s.ecfp.shape == (featblock.ECFP_BYTES,) and s.counts.shape == (featblock.COUNT_BITS,)
    assert student_vectors(s.ecfp[None], s.counts[None]).shape == (1, featblock.STUDENT_DIM)
    t = TeacherFeaturizer()(mol)
    assert t.atom_x.shape[1] == featblock.ATOM_FDIM and t.edge_attr.shape[1] == featblock.BOND_FDIM
    settings, _ = run_settings(RowOptions(mode="student"))
    assert settings["rows"]["spectrum"]["bins"] == N_BINS
    assert settings["ecfp"]["fp_size"] == featblock.ECFP_BITS
    assert settings["counts"]["fp_size"] == featblock.COUNT_BITS


def test_model_defaults_read_the_widths() -> None:
    from neimsctl.models.neims_v1 import NeimsV1Config
    from neimsctl.models.student import StudentConfig
    from neimsctl.models.teacher_config import TeacherConfig

    assert StudentConfig().input_dim == featblock.STUDENT_DIM
    t = TeacherConfig()
    assert (t.atom_dim, t.bond_dim, t.ecfp_dim) == (featblock.ATOM_FDIM, featblock.BOND_FDIM,
                                                    featblock.ECFP_BITS)
    assert NeimsV1Config().input_dim == featblock.MORGAN_COUNT_BITS
    assert {StudentConfig().n_bins, t.n_bins, NeimsV1Config().n_bins} == {N_BINS}


def _numbers(path: Path) -> list[tuple[int, int]]:
    """``(value, line)`` of every integer literal in the code of ``path`` (not in strings)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.NUMBER and tok.string.isdigit():
            out.append((int(tok.string), tok.start[0]))
    return out


def test_no_module_repeats_the_width_literals() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in PENDING:
            continue
        for value, line in _numbers(path):
            if value in OWNED and OWNED[value] != rel:
                found.append(f"{rel}:{line}: {value}")
    assert not found, "use io/spectrum.N_BINS / io/featblock's widths: " + ", ".join(found)
