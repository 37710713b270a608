"""Is a molecule inside the domain of a spectrum predictor trained on an EI library?

The models learn from organic and organo-element compounds measured as one neutral molecule,
with spectra cut at m/z 500. ``predict`` writes a spectrum for any structure it can read, so
molecules outside that domain are marked (``flags`` in JSONL, an ``out_of_domain`` comment in
MSP, a count in the summary) or rejected (``--out-of-domain reject``). The test reads only the
canonical SMILES, the formula and the nominal mass that every predicted row already carries
(no second RDKit pass; a few microseconds per molecule).

Flags (in this order):

- ``mixture``: more than one component (``.`` in the SMILES: salts, solvates, mixtures);
- ``charged``: an atom with a formal charge (ions; zwitterions such as nitro groups written
  as ``[N+](=O)[O-]`` with no net charge are not flagged);
- ``dummy_atom``: ``*`` (attachment points, polymers, Markush; :func:`has_dummy_atom`);
- ``isotope``: an explicitly labelled isotope (``[2H]``, ``[13C]``);
- ``element:X``: an element outside :data:`DOMAIN_ELEMENTS` (metals, noble gases, ...);
- ``mass_below_50``: nominal mass below 50, lighter than any molecule the models learn from
  (``msp2jsonl`` and ``featurize`` reject such records by default, ``--min-mw 50``);
- ``mass_above_500``: nominal mass above the last m/z bin (the molecular ion is not predicted).
"""

from __future__ import annotations

import re

from neimsctl.io.spectrum import N_BINS

__all__ = ["DOMAIN_ELEMENTS", "MIN_MASS", "MAX_MASS", "domain_flags", "flag_kind", "has_dummy_atom",
           "dummy_atom_detail"]

#: Elements of the organic and organo-element compounds of EI libraries (NIST, MassBank: in the
#: MassBank DEV set, every other element occurs in fewer than 20 of 8,196 spectra).
DOMAIN_ELEMENTS = frozenset("H D T B C N O F Si P S Cl Se Br I Ge Sn As".split())
#: Lightest nominal mass of the training data (the default ``--min-mw`` of ``msp2jsonl`` and
#: ``featurize``, SPEC.md's 50..1000 Da).
MIN_MASS = 50
#: Heaviest nominal mass whose molecular ion lies within the predicted m/z range.
MAX_MASS = N_BINS - 1
_ELEMENT = re.compile(r"[A-Z][a-z]?")
_CHARGED_ATOM = re.compile(r"\[[^\]]*[+-][^\]]*\]")
#: A mass number before an element symbol (``[2H]``, ``[13c]``); not before ``*`` or ``#0`` (``[1*]``:
#: an R-group label on a dummy atom, no isotope).
_ISOTOPE = re.compile(r"\[\d+[A-Za-z]")
#: A bracket atom of atomic number 0 written by number (``[#0]``, ``[2#0H]``), not as ``*``.
_DUMMY_BY_NUMBER = re.compile(r"\[\d*#0(?!\d)")


def domain_flags(smiles: str, formula: str, mw: int) -> list[str]:
    """The reasons a molecule lies outside the predictor's domain (empty: inside).

    Parameters
    ----------
    smiles
        Canonical SMILES (RDKit).
    formula
        Molecular formula (Hill order, as RDKit writes it; charges such as ``+`` are ignored).
    mw
        Nominal mass.

    Examples
    --------
    >>> domain_flags("CCCO", "C3H8O", 60)
    []
    >>> domain_flags("CCO", "C2H6O", 46)
    ['mass_below_50']
    >>> domain_flags("[Na+].[Cl-]", "ClNa", 58)
    ['mixture', 'charged', 'element:Na']
    >>> domain_flags("C[N+](=O)[O-]", "CH3NO2", 61)
    []
    """
    flags = []
    if "." in smiles:
        flags.append("mixture")
    if "[" in smiles and _net_charged(smiles):
        flags.append("charged")
    if has_dummy_atom(smiles):
        flags.append("dummy_atom")
    if "[" in smiles and _ISOTOPE.search(smiles):
        flags.append("isotope")
    flags += [f"element:{e}" for e in dict.fromkeys(_ELEMENT.findall(formula))
              if e not in DOMAIN_ELEMENTS]
    if mw < MIN_MASS:
        flags.append("mass_below_50")
    if mw > MAX_MASS:
        flags.append("mass_above_500")
    return flags


def has_dummy_atom(smiles: str) -> bool:
    """True when ``smiles`` holds a dummy atom (atomic number 0), read from the text alone.

    RDKit writes every atom of atomic number 0 as ``*`` (``[1*]``, ``[*:1]``): a MOL file's
    ``R#``, ``R``, ``A``, ``Q`` or ``*`` atom, an R-group, an attachment point, a polymer end. A
    SMILES RDKit has not written may also say ``[#0]``. Such a structure is a fragment or a
    pattern, not a molecule: ``predict`` marks it (:func:`domain_flags`), ``featurize`` and
    ``msp2jsonl`` reject it (:func:`dummy_atom_detail`).

    Examples
    --------
    >>> has_dummy_atom("*c1ccccc1"), has_dummy_atom("[2#0]CC"), has_dummy_atom("C#0CCCC0")
    (True, True, False)
    """
    return "*" in smiles or ("#0" in smiles and _DUMMY_BY_NUMBER.search(smiles) is not None)


def dummy_atom_detail(smiles: str) -> str | None:
    """The reject detail of a structure with a dummy atom (reason ``dummy_atom``, the flag
    ``predict`` gives it), or ``None`` when ``smiles`` has none (:func:`has_dummy_atom`)."""
    if not has_dummy_atom(smiles):
        return None
    return (f"SMILES {smiles[:80]!r} has a dummy atom (*, atomic number 0: an R-group, "
            f"attachment point or polymer end), not a whole molecule")


def _net_charged(smiles: str) -> bool:
    """True when the bracket atoms' formal charges do not sum to zero, or any component of a
    mixture carries a charge (a salt: each ion is charged though the whole is neutral)."""
    total = 0
    for atom in _CHARGED_ATOM.findall(smiles):
        sign = atom.rfind("+"), atom.rfind("-")
        at = max(sign)
        tail = atom[at + 1:-1]
        sym = atom[at]
        run = len(atom[:at + 1]) - len(atom[:at + 1].rstrip(sym))   # "++" = +2
        n = int(tail) if tail.isdigit() else run
        total += n if sym == "+" else -n
        if "." in smiles:
            return True
    return total != 0


def flag_kind(flag: str) -> str:
    """The summary's name of a flag: ``element:Fe`` -> ``element``."""
    return flag.split(":", 1)[0]
