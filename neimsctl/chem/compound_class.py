"""Compound classes the student's experts are meant to specialise in (SPEC.md "Models").

SPEC.md names four experts: aromatic, aliphatic, heterocyclic and general. The rule that puts a
molecule in one class is ours (the spec does not give one); it is decided by RDKit from the
SMILES, first match wins:

1. ``general``: no carbon, an element outside the common organic set
   ``{H, C, N, O, F, P, S, Cl, Br, I}`` (e.g. Si of the TMS derivatives common in GC-EI
   libraries, Se, B, metals), or a SMILES RDKit cannot parse;
2. ``heterocyclic``: some ring (SSSR) contains an atom other than carbon (aromatic or not:
   pyridine, furan, THF, piperidine, lactones);
3. ``aromatic``: some aromatic carbocycle (benzene, naphthalene, ...);
4. ``aliphatic``: everything else (acyclic or only non-aromatic carbocycles).

Ring-membership is RDKit's ``RingInfo`` on the sanitised molecule, aromaticity its default model.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["CLASSES", "ORGANIC_ELEMENTS", "compound_class", "compound_classes"]

#: Class names; an integer class id is the position in this tuple.
CLASSES: tuple[str, ...] = ("aromatic", "aliphatic", "heterocyclic", "general")
#: Elements that keep a molecule out of ``general``.
ORGANIC_ELEMENTS = frozenset({"H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"})


def compound_class(smiles: str | None) -> str:
    """The class of one molecule (see the module docstring for the rule).

    Parameters
    ----------
    smiles
        A SMILES string; ``None``, empty or unparsable gives ``"general"``.

    Returns
    -------
    str
        One of :data:`CLASSES`.

    Examples
    --------
    >>> [compound_class(s) for s in ("c1ccccc1O", "CCCCO", "c1ccncc1", "C[Si](C)(C)OC")]
    ['aromatic', 'aliphatic', 'heterocyclic', 'general']
    """
    from rdkit import Chem, RDLogger

    if not smiles:
        return "general"
    # off for the process, as neimsctl.chem.structure and the row builder leave it (turning it
    # back on here made every later unparsable SMILES print RDKit's own lines)
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return "general"
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    if "C" not in symbols or any(s not in ORGANIC_ELEMENTS for s in symbols):
        return "general"
    rings = mol.GetRingInfo().AtomRings()
    if any(any(mol.GetAtomWithIdx(i).GetAtomicNum() != 6 for i in ring) for ring in rings):
        return "heterocyclic"
    if any(all(mol.GetAtomWithIdx(i).GetIsAromatic() for i in ring) for ring in rings):
        return "aromatic"
    return "aliphatic"


def compound_classes(smiles: Iterable[str | bytes | None]) -> np.ndarray:
    """Class ids (positions in :data:`CLASSES`) of many molecules, ``(N,)`` int8."""
    index = {name: i for i, name in enumerate(CLASSES)}
    out = [index[compound_class(s.decode() if isinstance(s, bytes) else s)] for s in smiles]
    return np.asarray(out, dtype=np.int8)
