"""Structure work for one record with RDKit: parse, canonicalize, identify, weigh, compare.

A structure comes from a SMILES, an InChI or a MOL block (lib2nist MOL files with a missing
or doubled ``M  END`` are repaired). :func:`describe` returns the canonical isomeric SMILES,
InChIKey, Hill formula, nominal mass and monoisotopic mass; :func:`compare_with_msp` returns
the names of the MSP's own fields (Formula, MW, InChIKey, ExactMass) that disagree with them.
Failures raise :class:`StructureError` carrying a reject reason; RDKit's own stderr chatter
is switched off.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from rdkit import Chem, RDLogger
from rdkit.Chem import rdMolDescriptors

from neimsctl.errors import FormatError

RDLogger.DisableLog("rdApp.*")

__all__ = ["Structure", "StructureError", "mol_from_smiles", "mol_from_inchi", "mol_from_molblock",
           "read_mol_file", "describe", "describe_smiles", "describe_inchi", "nominal_mass", "formula_nominal_mass", "compare_with_msp", "formula_counts"]

_PT = Chem.GetPeriodicTable()
_COMMON_ISOTOPE = [0] + [_PT.GetMostCommonIsotope(z) for z in range(1, 119)]
_FORMULA_TOKEN = re.compile(r"(\[\d+[A-Z][a-z]?\]|[A-Z][a-z]?)(\d*)")
_SYMBOL_MASS: dict[str, int] = {"D": 2, "T": 3}
_M_END = re.compile(r"^M  END[ \t]*\r?$", re.M)
_UNSAFE_IN_NAME = frozenset({"/", "\\", "\x00", os.sep, os.altsep or "/"})


class StructureError(FormatError):
    """A record's structure is missing or unusable; ``reason`` is the reject code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Structure(NamedTuple):
    """What RDKit says about one structure.

    Attributes
    ----------
    smiles : str
        Canonical isomeric SMILES.
    inchikey : str
        Standard InChIKey ('' when InChI generation fails).
    formula : str
        Hill formula; isotopes written as ``D`` and ``[13C]``.
    mw : int
        Nominal mass: sum over all atoms incl. H of the most abundant isotope's mass number,
        or of the labelled isotope where one is given.
    exact_mass : float
        Monoisotopic mass.
    """

    smiles: str
    inchikey: str
    formula: str
    mw: int
    exact_mass: float


def mol_from_smiles(smiles: str) -> Chem.Mol:
    """Parse and sanitize a SMILES; :class:`StructureError` ``unparsable_structure`` on failure."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise StructureError("unparsable_structure", f"RDKit cannot parse SMILES {smiles[:80]!r}")
    return mol


def mol_from_inchi(inchi: str) -> Chem.Mol:
    """Parse an InChI; :class:`StructureError` ``unparsable_structure`` on failure."""
    text = inchi.strip()
    if not text.startswith("InChI="):
        text = "InChI=" + text
    mol = Chem.MolFromInchi(text, sanitize=True, removeHs=True)
    if mol is None or mol.GetNumAtoms() == 0:
        raise StructureError("unparsable_structure", f"RDKit cannot parse InChI {inchi[:80]!r}")
    return mol


def repair_molblock(text: str) -> str:
    """Cut a MOL block after its first ``M  END`` line, or add the line when it is missing.

    lib2nist writes some MOL files without ``M  END`` or with it twice (sometimes with
    SD data or ``$$$$`` after it); RDKit rejects both.
    """
    text = text.replace("\r\n", "\n")
    m = _M_END.search(text)
    if m is not None:
        return text[:m.end()] + "\n"
    body = text.split("$$$$", 1)[0].rstrip("\n")
    return body + "\nM  END\n"


def mol_from_molblock(text: str, where: str = "MOL block") -> Chem.Mol:
    """Parse a V2000/V3000 MOL block (repaired by :func:`repair_molblock`)."""
    try:
        mol = Chem.MolFromMolBlock(repair_molblock(text), sanitize=True, removeHs=True)
    except Exception as exc:  # RDKit raises plain RuntimeErrors on some broken CTABs
        raise StructureError("unparsable_structure", f"{where}: {exc}") from None
    if mol is None or mol.GetNumAtoms() == 0:
        raise StructureError("unparsable_structure", f"{where}: RDKit cannot parse the MOL block")
    return mol


def read_mol_file(mol_dir: str | os.PathLike, record_id: str) -> Chem.Mol:
    """Read ``<mol_dir>/ID<record_id>.MOL`` (or ``.mol``).

    Only plain file names directly inside ``mol_dir`` are opened: an ID holding a path
    separator (``../outside/secret``, ``/etc/passwd``) or a NUL byte is refused, so an MSP file
    cannot make the converter read files elsewhere.

    Raises
    ------
    StructureError
        ``unsafe_mol_path`` when the ID is not a plain file name, ``missing_mol_file`` when no
        such file exists, ``unparsable_structure`` when it cannot be parsed.
    """
    if any(c in record_id for c in _UNSAFE_IN_NAME):
        raise StructureError("unsafe_mol_path", f"record ID {record_id[:80]!r} is not a plain file "
                             f"name; only files directly in {mol_dir} are read")
    base = Path(mol_dir)
    for name in (f"ID{record_id}.MOL", f"ID{record_id}.mol", f"{record_id}.MOL", f"{record_id}.mol"):
        path = base / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StructureError("missing_mol_file", f"{path}: cannot read: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        return mol_from_molblock(text, where=str(path))
    raise StructureError("missing_mol_file", f"no MOL file ID{record_id}.MOL in {base}")


def nominal_mass(mol: Chem.Mol) -> int:
    """Sum of the mass numbers of the most abundant isotope of every atom, H included.

    An atom labelled with an isotope (``[2H]``, ``[13C]``) counts with that mass number.

    Examples
    --------
    >>> nominal_mass(Chem.MolFromSmiles("ClC(Cl)Cl")), nominal_mass(Chem.MolFromSmiles("[2H]C(Cl)(Cl)Cl"))
    (118, 119)
    """
    return formula_nominal_mass(rdMolDescriptors.CalcMolFormula(mol, True, True))


def formula_nominal_mass(formula: str) -> int:
    """Nominal mass of an RDKit formula written with separated isotopes (``C6D6``, ``[13C]H4``).

    Parsing the formula (one C++ call made anyway) is several times faster than a Python loop
    over the atoms.
    """
    total = 0
    for sym, num in _FORMULA_TOKEN.findall(formula):
        mass = _SYMBOL_MASS.get(sym)
        if mass is None:
            if sym.startswith("["):
                mass = int(sym[1:].rstrip("]abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            else:
                mass = _COMMON_ISOTOPE[_PT.GetAtomicNumber(sym)]
            _SYMBOL_MASS[sym] = mass
        total += mass * (int(num) if num else 1)
    return total


def describe(mol: Chem.Mol) -> Structure:
    """Canonical SMILES, InChIKey, formula, nominal and exact mass of a sanitized molecule."""
    try:
        inchikey = Chem.MolToInchiKey(mol) or ""
    except Exception:  # InChI cannot represent some structures; keep the record, no key
        inchikey = ""
    formula = rdMolDescriptors.CalcMolFormula(mol, True, True)
    return Structure(
        smiles=Chem.MolToSmiles(mol),
        inchikey=inchikey,
        formula=formula,
        mw=formula_nominal_mass(formula),
        exact_mass=round(rdMolDescriptors.CalcExactMolWt(mol), 5),
    )


#: Structures remembered per process by :func:`describe_smiles` / :func:`describe_inchi`: a
#: library holds several spectra of many compounds (8,196 MassBank EI records, 6,531 distinct
#: SMILES), and their structure work is the same. ~300 bytes each, so at most ~5 MB.
CACHE_SIZE = 16384


@lru_cache(maxsize=CACHE_SIZE)
def describe_smiles(smiles: str) -> Structure:
    """:func:`describe` of a SMILES, remembered for the next record with the same text."""
    return describe(mol_from_smiles(smiles))


@lru_cache(maxsize=CACHE_SIZE)
def describe_inchi(inchi: str) -> Structure:
    """:func:`describe` of an InChI, remembered for the next record with the same text."""
    return describe(mol_from_inchi(inchi))


def formula_counts(formula: str) -> dict[str, int]:
    """Element (or ``[13C]``-style isotope) counts of a formula; order and blanks ignored.

    Raises
    ------
    ValueError
        A count too long to be a number (more than 4300 digits).
    """
    counts: dict[str, int] = {}
    for sym, num in _FORMULA_TOKEN.findall(formula.replace(" ", "")):
        counts[sym] = counts.get(sym, 0) + (int(num) if num else 1)
    return counts


def _msp_number(text: str) -> float | None:
    """A finite number from an MSP header value (decimal comma accepted), else ``None``."""
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        return None
    return value if value - value == 0 else None


def compare_with_msp(st: Structure, fields: dict[str, str]) -> list[str]:
    """Flags for the MSP's own Formula / MW / InChIKey / ExactMass that disagree with ``st``.

    These MSP lines are informational once the structure is known (RDKit computes formula,
    masses and key from it), so a value that cannot even be read (``MW: inf``, ``MW: 1e400``,
    a count of thousands of digits) is a disagreement like any other: flagged, never an error.

    Returns
    -------
    list of str
        Some of ``formula_mismatch``, ``mw_mismatch``, ``inchikey_mismatch``,
        ``exact_mass_mismatch``; empty when all given fields agree.
    """
    flags = []
    formula = fields.get("formula")
    if formula and formula.replace(" ", "") != st.formula:
        try:
            same = formula_counts(formula) == formula_counts(st.formula)
        except ValueError:
            same = False
        if not same:
            flags.append("formula_mismatch")
    mw = fields.get("mw")
    if mw:
        value = _msp_number(mw)
        if value is None or round(value) != st.mw:
            flags.append("mw_mismatch")
    key = fields.get("inchikey")
    if key and st.inchikey and key.strip().upper() != st.inchikey:
        flags.append("inchikey_mismatch")
    exact = fields.get("exactmass")
    if exact:
        value = _msp_number(exact)
        if value is None or abs(value - st.exact_mass) > 2e-3:
            flags.append("exact_mass_mismatch")
    return flags
