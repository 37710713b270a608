"""Structure work for one record with RDKit: parse, canonicalize, identify, weigh, compare.

A structure comes from a SMILES, an InChI or a MOL block (lib2nist MOL files with a missing
or doubled ``M  END`` are repaired). :func:`describe` returns the canonical isomeric SMILES,
InChIKey, Hill formula, nominal mass and monoisotopic mass; :func:`compare_with_msp` returns
the names of the MSP's own fields (Formula, MW, InChIKey, ExactMass) that disagree with them.
Failures raise :class:`StructureError` carrying a reject reason; RDKit's own stderr chatter
is switched off.

Size limits: structures larger than :data:`MAX_HEAVY_ATOMS` heavy atoms, or written in more
than :data:`MAX_STRUCTURE_CHARS` characters, are refused (``too_large``) *before* RDKit parses
them (:func:`smiles_too_large`, :func:`inchi_too_large`, :func:`molblock_too_large` count from
the text). A MOL file larger than :data:`MAX_MOL_FILE_BYTES` is refused (``too_large``) from
its size, before it is read. Far beyond any EI-MS molecule (the largest MassBank EI structure has 58 heavy
atoms; NIST's reach ~150), they keep RDKit from what it cannot do safely: a 20,000-atom
SMILES makes it crash the process, and the atom-pair fingerprint of the features costs
O(n^3) in the atom count (RDKit's distance matrix: 0.5 s at 500 atoms, 8 s at 1,000,
25 s at 1,500).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from rdkit import Chem, RDLogger
from rdkit.Chem import rdMolDescriptors

from neimsctl.errors import FormatError
from neimsctl.io.inchikey import stated_inchikey
from neimsctl.io.streams import decode_text, display_name

RDLogger.DisableLog("rdApp.*")

__all__ = ["Structure", "StructureError", "mol_from_smiles", "mol_from_inchi", "mol_from_molblock",
           "read_mol_file", "describe", "describe_smiles", "describe_inchi", "nominal_mass",
           "formula_nominal_mass", "compare_with_msp", "formula_counts",
           "MAX_HEAVY_ATOMS", "MAX_STRUCTURE_CHARS", "smiles_heavy_atoms", "smiles_too_large",
           "inchi_too_large", "molblock_too_large", "MAX_MOL_FILE_BYTES"]

#: Most heavy (non-hydrogen) atoms of a structure neimsctl works on (reject reason ``too_large``).
MAX_HEAVY_ATOMS = 500
#: Longest SMILES or InChI text handed to RDKit (``too_large``): 20 characters per heavy atom.
MAX_STRUCTURE_CHARS = 10_000
#: Largest MOL file :func:`read_mol_file` reads (``too_large``): a MOL file of an EI-MS molecule
#: is a few KB (NIST's largest are well under 1 MB; 500 heavy atoms and their hydrogens take
#: ~150 KB), so a bigger ``ID<id>.MOL`` is something else, never read into memory.
MAX_MOL_FILE_BYTES = 16 * 2**20

_PT = Chem.GetPeriodicTable()
_COMMON_ISOTOPE = [0] + [_PT.GetMostCommonIsotope(z) for z in range(1, 119)]
_FORMULA_TOKEN = re.compile(r"(\[\d+[A-Z][a-z]?\]|[A-Z][a-z]?)(\d*)")
_SYMBOL_MASS: dict[str, int] = {"D": 2, "T": 3}
_M_END = re.compile(r"^M  END[ \t]*\r?$", re.M)
_UNSAFE_IN_NAME = frozenset({"/", "\\", "\x00", os.sep, os.altsep or "/"})
_BRACKET = re.compile(r"\[[^\]]*\]")
_BRACKET_H = re.compile(r"\[\d*H(?![a-z])")  # [H], [2H], [H+]: hydrogen (not He, Hg, ...)
_ORGANIC_ATOM = re.compile(r"Cl|Br|[BCNOPSFIbcnops*]")
_INCHI_ATOM = re.compile(r"([A-Z][a-z]?)(\d*)")
_TOO_LARGE_HINT = "larger than any EI-MS molecule"


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


def smiles_heavy_atoms(smiles: str) -> int:
    """Heavy atoms of a SMILES, counted from the text (bracket atoms other than hydrogen,
    organic-subset atoms and ``*``), without parsing it."""
    bare = _BRACKET.sub("", smiles)
    brackets = _BRACKET.findall(smiles)
    return len(_ORGANIC_ATOM.findall(bare)) + sum(1 for b in brackets if not _BRACKET_H.match(b))


def _too_many(n: int) -> str | None:
    return f"{n:,} heavy atoms (limit {MAX_HEAVY_ATOMS}: {_TOO_LARGE_HINT})" \
        if n > MAX_HEAVY_ATOMS else None


def smiles_too_large(smiles: str) -> str | None:
    """Why ``smiles`` is too large to hand to RDKit, or ``None`` (O(1) for ordinary SMILES).

    Examples
    --------
    >>> smiles_too_large("CCO") is None, smiles_too_large("C" * 501)
    (True, '501 heavy atoms (limit 500: larger than any EI-MS molecule)')
    """
    if len(smiles) <= MAX_HEAVY_ATOMS:  # every atom takes at least one character
        return None
    if len(smiles) > MAX_STRUCTURE_CHARS:
        return (f"SMILES of {len(smiles):,} characters (limit {MAX_STRUCTURE_CHARS:,}: "
                f"{_TOO_LARGE_HINT})")
    return _too_many(smiles_heavy_atoms(smiles))


def inchi_too_large(inchi: str) -> str | None:
    """Why ``inchi`` is too large to hand to RDKit, or ``None``; heavy atoms are read from its
    formula layer (``InChI=1S/C6H6/...``; components like ``2C2H4O2.Na`` are multiplied)."""
    if len(inchi) > MAX_STRUCTURE_CHARS:
        return (f"InChI of {len(inchi):,} characters (limit {MAX_STRUCTURE_CHARS:,}: "
                f"{_TOO_LARGE_HINT})")
    layers = inchi.strip().split("/")
    if len(layers) < 2:
        return None
    heavy = 0
    for part in layers[1].split("."):
        digits = len(part) - len(part.lstrip("0123456789"))
        times = int(part[:digits]) if digits else 1
        heavy += times * sum(int(n) if n else 1 for sym, n in _INCHI_ATOM.findall(part[digits:])
                             if sym not in ("H", "D", "T"))
    return _too_many(heavy)


def molblock_too_large(text: str) -> str | None:
    """Why a V2000/V3000 MOL block is too large to hand to RDKit, or ``None``.

    The counts line gives the number of atoms; only when it is above the limit are the atom
    lines read to leave out explicit hydrogens. A block whose counts cannot be read is left to
    RDKit (which rejects it).
    """
    lines = text.splitlines()
    if len(lines) < 4:
        return None
    counts = lines[3]
    try:
        if "V3000" in counts:
            start = next(i for i, ln in enumerate(lines) if ln.startswith("M  V30 COUNTS"))
            n = int(lines[start].split()[3])
            if n <= MAX_HEAVY_ATOMS:
                return None
            begin = next(i for i, ln in enumerate(lines) if ln.startswith("M  V30 BEGIN ATOM"))
            atoms = [ln.split()[3] for ln in lines[begin + 1:begin + 1 + n]]
        else:
            n = int(counts[:3])
            if n <= MAX_HEAVY_ATOMS:
                return None
            atoms = [ln[31:34].strip() for ln in lines[4:4 + n]]
    except (ValueError, IndexError, StopIteration):
        return None
    return _too_many(sum(1 for a in atoms if a not in ("H", "D", "T")))


def mol_from_smiles(smiles: str) -> Chem.Mol:
    """Parse and sanitize a SMILES; :class:`StructureError` ``unparsable_structure`` on failure,
    ``too_large`` when :func:`smiles_too_large` refuses it."""
    big = smiles_too_large(smiles)
    if big is not None:
        raise StructureError("too_large", big)
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise StructureError("unparsable_structure", f"RDKit cannot parse SMILES {smiles[:80]!r}")
    return mol


def mol_from_inchi(inchi: str) -> Chem.Mol:
    """Parse an InChI; :class:`StructureError` ``unparsable_structure`` on failure, ``too_large``
    when :func:`inchi_too_large` refuses it."""
    big = inchi_too_large(inchi)
    if big is not None:
        raise StructureError("too_large", big)
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
    """Parse a V2000/V3000 MOL block (repaired by :func:`repair_molblock`); ``too_large`` when
    :func:`molblock_too_large` refuses it."""
    big = molblock_too_large(text)
    if big is not None:
        raise StructureError("too_large", f"{where}: {big}")
    try:
        mol = Chem.MolFromMolBlock(repair_molblock(text), sanitize=True, removeHs=True)
    except Exception as exc:  # RDKit raises plain RuntimeErrors on some broken CTABs
        raise StructureError("unparsable_structure", f"{where}: {exc}") from None
    if mol is None or mol.GetNumAtoms() == 0:
        raise StructureError("unparsable_structure", f"{where}: RDKit cannot parse the MOL block")
    return mol


def _mol_file_too_large(path: Path, size: int | None) -> StructureError:
    """``too_large`` of a MOL file of ``size`` bytes (``None``: more than the limit, the file
    did not say how many)."""
    limit = MAX_MOL_FILE_BYTES
    what = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    said = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"
    return StructureError("too_large", f"{display_name(path)}: a file of {what}, not read (limit "
                                       f"{said}: the MOL file of an EI-MS molecule is a few KB)")


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_MOL_FILE_BYTES`. Opened without
    blocking, so a FIFO (or a device) named like a MOL file is refused at once instead of waiting
    forever for a writer; a larger file is refused from its size (:class:`StructureError`
    ``too_large``), and no more than the limit and one byte is read of one that grows."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_MOL_FILE_BYTES:
            raise _mol_file_too_large(path, st.st_size)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_MOL_FILE_BYTES + 1)
        if len(data) > MAX_MOL_FILE_BYTES:
            raise _mol_file_too_large(path, None)  # stat said less (/proc), or it grew
        return data
    finally:
        os.close(fd)


def read_mol_file(mol_dir: str | os.PathLike, record_id: str) -> Chem.Mol:
    """Read ``<mol_dir>/ID<record_id>.MOL`` (or ``.mol``).

    Only plain file names directly inside ``mol_dir`` are opened: an ID holding a path
    separator (``../outside/secret``, ``/etc/passwd``) or a NUL byte is refused, so an MSP file
    cannot make the converter read files elsewhere.

    Raises
    ------
    StructureError
        ``unsafe_mol_path`` when the ID is not a plain file name, ``missing_mol_file`` when no
        such file exists, ``too_large`` when the file is larger than :data:`MAX_MOL_FILE_BYTES`
        (or its structure than :data:`MAX_HEAVY_ATOMS`), ``unparsable_structure`` when it
        cannot be parsed.
    """
    if any(c in record_id for c in _UNSAFE_IN_NAME):
        raise StructureError("unsafe_mol_path", f"record ID {record_id[:80]!r} is not a plain file "
                             f"name; only files directly in {display_name(mol_dir)} are read")
    base = Path(mol_dir)
    for name in (f"ID{record_id}.MOL", f"ID{record_id}.mol", f"{record_id}.MOL", f"{record_id}.mol"):
        path = base / name
        try:
            data = _read_regular(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StructureError("missing_mol_file",
                                 f"{display_name(path)}: cannot read: {exc.strerror}") from None
        return mol_from_molblock(decode_text(data), where=display_name(path))
    raise StructureError("missing_mol_file", f"no MOL file ID{record_id}.MOL in {display_name(base)}")


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
    if key and st.inchikey and (stated_inchikey(key) or key.strip().upper()) != st.inchikey:
        flags.append("inchikey_mismatch")
    exact = fields.get("exactmass")
    if exact:
        value = _msp_number(exact)
        if value is None or abs(value - st.exact_mass) > 2e-3:
            flags.append("exact_mass_mismatch")
    return flags
