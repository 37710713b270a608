"""Compound classes for the expert-usage report: known molecules land in the documented class."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.chem.compound_class import CLASSES, compound_class, compound_classes


@pytest.mark.parametrize("smiles, expected", [
    ("c1ccccc1", "aromatic"),                 # benzene
    ("Cc1ccc2ccccc2c1", "aromatic"),          # 2-methylnaphthalene
    ("OC(=O)c1ccccc1Cl", "aromatic"),         # halogens stay organic
    ("CCCCCCCC", "aliphatic"),                # octane
    ("C1CCCCC1O", "aliphatic"),               # cyclohexanol: carbocycle, O outside the ring
    ("CC(=O)OCC", "aliphatic"),               # ethyl acetate
    ("c1ccncc1", "heterocyclic"),             # pyridine
    ("C1CCOC1", "heterocyclic"),              # THF: non-aromatic heterocycle
    ("c1ccc2[nH]ccc2c1", "heterocyclic"),     # indole: heterocycle wins over the benzene ring
    ("C[Si](C)(C)OC(=O)c1ccccc1", "general"),  # TMS ester: Si
    ("O=S(=O)(O)O", "general"),               # no carbon
    ("not a smiles", "general"),
    (None, "general"),
])
def test_known_molecules(smiles: str | None, expected: str) -> None:
    assert compound_class(smiles) == expected


def test_vectorised_ids_follow_classes_order() -> None:
    ids = compound_classes([b"c1ccccc1", "CCO", "c1ccoc1", "[Se]"])
    assert ids.dtype == np.int8
    assert [CLASSES[i] for i in ids] == ["aromatic", "aliphatic", "heterocyclic", "general"]
