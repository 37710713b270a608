"""One input record -> one feature row (or a reject reason); rows -> a feature block.

Runs inside ``featurize`` workers, so it takes raw input lines (JSONL record or
``SMILES [name]``) and does all parsing here, off the parent process (this is why it does not
use :func:`neimsctl.io.jsonl.read_jsonl`, which parses in the reading process and stops at
a bad line, where featurize reports the line as a ``bad_json`` reject and goes on).

JSONL records (contract 1) are trusted for ``smiles`` (already RDKit-canonical), ``inchikey``,
``formula`` and ``mw``; missing values are computed. SMILES lines are canonicalized here.

Fields of JSONL records are checked before use: ``smiles``, ``id`` (a number is taken as
text), ``name``, ``formula`` and ``inchikey`` must be strings (or null), a ``formula`` that cannot be read is replaced by the
structure's own, a non-integer ``mw`` is recomputed, ``comments`` other than an object are
ignored. Control characters in text fields become blanks, so that no name or id can break the
line structure of an MSP or JSONL output.

Reject reasons: ``bad_json`` (not a JSON object), ``bad_field`` (a field above of the wrong
type), ``no_structure`` (record without SMILES),
``unparsable_smiles`` (RDKit cannot read it), ``dummy_atom`` (a ``*`` atom: an R-group or
attachment point, no molecule a spectrum belongs to; :func:`neimsctl.chem.domain.has_dummy_atom`;
``predict`` keeps and marks them instead, :attr:`RowOptions.dummy_atoms`), ``too_large`` (more than
:data:`~neimsctl.chem.structure.MAX_HEAVY_ATOMS` heavy atoms or
:data:`~neimsctl.chem.structure.MAX_STRUCTURE_CHARS` characters, refused before RDKit parses
it), ``worker_crashed`` (the worker process died on the record, see :func:`crashed`),
``mw_out_of_range`` (nominal mass outside
``[min_mw, max_mw]``, SPEC.md: 50..1000 Da), ``featurize_failed`` (RDKit raised while
computing features), ``bad_peaks`` (``mz`` and ``intensity`` unusable, e.g. of different
lengths).
"""

from __future__ import annotations

import functools
import math
import re
from collections import OrderedDict
from itertools import chain
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
from rdkit import Chem, RDLogger
from rdkit.Chem import rdMolDescriptors

from neimsctl.chem.domain import dummy_atom_detail
from neimsctl.chem.features import assemble_ecfp, get_featurizer
from neimsctl.chem.fragments import assemble_frags
from neimsctl.io.spectrum import N_BINS, NOISE_LEVEL, SCALE_ABOVE, SCALE_BELOW, preprocess_spectrum
from neimsctl.chem.structure import MAX_HEAVY_ATOMS, formula_nominal_mass, smiles_too_large
from neimsctl.io.featblock import empty_block
from neimsctl.io.inputs import Item
from neimsctl.io.streams import decode_text

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Largest ionization energy (eV) taken as given; EI sources run at 10..100 eV.
MAX_ENERGY = 10_000.0
#: JSONL record schemas featurize reads (a record of another, e.g. a later version, is
#: ``unknown_schema``: its fields may mean something else).
KNOWN_SCHEMAS = ("neimsctl.record/1", "neimsctl.prediction/1", "neimsctl.prediction-run/1")
#: JSONL record fields that must be strings when present (else the record is ``bad_field``).
TEXT_FIELDS = ("smiles", "id", "name", "formula", "inchikey")



@dataclass(frozen=True)
class RowOptions:
    """Per-row settings shared by all workers."""

    mode: str = "student"
    min_mw: int = 50
    max_mw: int = 1000
    inchikey: bool = True   # compute InChIKeys for SMILES input (records carry their own)
    #: compute the fragment masses (``frags``); ``predict`` leaves them out for a model that does
    #: not read them (~0.1 ms per molecule); every stored block has them
    fragments: bool = True
    #: featurize structures with a dummy atom (``*``); ``predict`` does and marks them
    #: (:mod:`neimsctl.chem.domain`), else (``featurize``) they are ``dummy_atom`` rejects
    dummy_atoms: bool = False


class Rejected(NamedTuple):
    """Why ``item`` was not featurized (``name``: the record's name, if it has one)."""

    item: Item
    id: str | None
    reason: str
    detail: str
    name: str | None = None


def ionization_energy(rec: dict[str, Any]) -> float:
    """eV from ``comments.ionization_energy`` (``"70 eV"``; MassBank) or ``comments["ionization
    energy"]`` (MoNA); NaN when absent, unspecified or not a plausible energy
    (``0 < eV <= MAX_ENERGY``: ``1e400`` or 500 digits are no energy)."""
    comments = rec.get("comments")
    if not isinstance(comments, dict):
        return math.nan
    value = comments.get("ionization_energy", comments.get("ionization energy"))
    return _energy(str(value)[:100])


@functools.lru_cache(maxsize=256)
def _energy(text: str) -> float:
    m = _NUMBER.search(text)
    value = float(m.group()) if m else math.nan
    return value if 0 < value <= MAX_ENERGY else math.nan


def clean_text(value: str) -> str:
    """``value`` with control characters (line breaks, NUL, ...) turned into blanks."""
    return _CONTROL.sub(" ", value) if _CONTROL.search(value) else value


def _formula_mass(formula: str) -> int | None:
    """Nominal mass of a record's formula text, ``None`` when it cannot be read."""
    try:
        return formula_nominal_mass(formula)
    except (RuntimeError, ValueError, IndexError, KeyError):  # unknown element, huge count
        return None


class _Structure:
    """What featurize derives from one SMILES text, kept for the next record with the same text.

    ``feats`` are the features (``None`` when the featurizer raised: ``error`` says why). The
    formula, canonical SMILES and InChIKey are made from the parsed molecule when ``strings``
    (a SMILES line, which carries none of them), else on first use: JSONL records carry their
    own. The RDKit ``Mol`` itself is never kept, not even until the end of the chunk: holding
    a chunk's molecules (tens of KB each) made every structure of the DEV records cost 131 µs
    instead of 103 µs (the bare RDKit loop: 101 µs), because RDKit then works in fresh memory
    instead of the blocks the previous molecule freed. A later record that needs a string not
    yet made parses ``smiles`` again.
    """

    __slots__ = ("smiles", "feats", "error", "_formula", "_canonical", "_key")

    def __init__(self, smiles: str, mol: Chem.Mol, feat: Any, strings: bool = False,
                 inchikey: bool = True) -> None:
        self.smiles, self.error, self.feats = smiles, None, None
        self._formula = self._canonical = self._key = None
        try:
            self.feats = feat(mol)
        except (RuntimeError, ValueError) as exc:
            self.error = str(exc)
        if strings:
            self.formula(mol), self.canonical(mol)
            if inchikey:
                self.key(mol)

    def formula(self, mol: Chem.Mol | None = None) -> str:
        if self._formula is None:
            self._formula = rdMolDescriptors.CalcMolFormula(self._mol(mol), True, True)
        return self._formula

    def canonical(self, mol: Chem.Mol | None = None) -> str:
        if self._canonical is None:
            self._canonical = Chem.MolToSmiles(self._mol(mol))
        return self._canonical

    def key(self, mol: Chem.Mol | None = None) -> str:
        if self._key is None:
            self._key = Chem.MolToInchiKey(self._mol(mol)) or ""
        return self._key

    def _mol(self, mol: Chem.Mol | None) -> Chem.Mol:
        return mol if mol is not None else Chem.MolFromSmiles(self.smiles)


class RowBuilder:
    """Featurize items into rows of one block (see :mod:`neimsctl.io.featblock`).

    Structures are remembered by SMILES text (the last ``cache_size``, per process): a spectral
    library holds several spectra of many compounds (MassBank EI: 8,183 records, 6,520
    structures), and their features are the same arrays, computed once.

    Remembering costs where nothing repeats: with 8,192 structures held, every new MOSES
    molecule took ~6 % longer (0.768 vs 0.725 ms, the mean of 8 alternated rounds of 8,192
    molecules; RDKit then works in fresh memory, as with kept molecules, see
    :class:`_Structure`). So the builder counts, per :data:`WINDOW` structures, how many
    repeated one seen in that window (a hit, or a text whose hash it saw while not remembering),
    and remembers during the next window only when at least :data:`MIN_REPEATS` of them did.
    """

    #: Structures per decision whether to remember them.
    WINDOW = 2048
    #: Share of repeated structures in a window above which the next window remembers.
    MIN_REPEATS = 0.05

    def __init__(self, opts: RowOptions, cache_size: int = 8192) -> None:
        RDLogger.DisableLog("rdApp.*")  # parse failures are reported as rejects instead
        self.opts, self.feat = opts, get_featurizer(opts.mode)
        self.feat.fragments = opts.fragments
        self._feat_row = self.feat.block_features  # the row form: _assemble completes the block
        self._cache: OrderedDict[str, _Structure | tuple[str, str]] = OrderedDict()
        self._cache_size = cache_size
        self._remember = cache_size > 0
        self._looked = self._repeats = 0
        self._seen: set[int] = set()  # hashes of the texts of this window while not remembering

    def _count(self, smiles: str, hit: bool) -> None:
        """Count one lookup; at the end of a window, decide whether the next one remembers."""
        if not hit and not self._remember:
            h = hash(smiles)
            hit = h in self._seen
            self._seen.add(h)
        self._looked += 1
        self._repeats += hit
        if self._looked >= self.WINDOW:
            self._remember = self._cache_size > 0 and \
                self._repeats >= self.MIN_REPEATS * self._looked
            if not self._remember:
                self._cache.clear()
            self._looked = self._repeats = 0
            self._seen.clear()

    def _structure(self, smiles: str, bare: bool = False) -> _Structure | tuple[str, str]:
        """The cached structure of ``smiles``, or ``(reason, detail)`` when RDKit cannot read it.

        ``bare``: a SMILES line, whose canonical SMILES, formula and (unless switched off)
        InChIKey are computed now, with the rest of the RDKit work.
        """
        cache = self._cache
        st = cache.get(smiles)
        if st is not None:
            cache.move_to_end(smiles)
        self._count(smiles, st is not None)        # (may end a window and empty the cache)
        if st is not None:
            return st
        if len(smiles) > MAX_HEAVY_ATOMS:
            big = smiles_too_large(smiles)
            if big is not None:  # not remembered: the key alone may be 10 kB
                return ("too_large", big)
        mol = Chem.MolFromSmiles(smiles)
        if mol is None or mol.GetNumAtoms() == 0:
            st = ("unparsable_smiles", f"RDKit cannot parse {smiles!r}")
        elif not self.opts.dummy_atoms and (dummy := dummy_atom_detail(smiles)) is not None:
            st = ("dummy_atom", dummy)
        else:
            st = _Structure(smiles, mol, self._feat_row, bare, self.opts.inchikey)
        if self._remember:
            cache[smiles] = st
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return st

    def build(self, items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected]]:
        """Featurize ``items``; returns the block of accepted rows and the rejects, in order."""
        rows: list[tuple] = []
        rejects: list[Rejected] = []
        # three passes (parse; RDKit; rows) rather than one per item: the RDKit calls run back
        # to back, which keeps the CPU caches warm for them (msp2jsonl measured 74% -> 86% of
        # the bare RDKit loop the same way)
        parsed = [self._parse(it) for it in items]
        structures = [None if isinstance(p, Rejected) else self._structure(p[1], it.kind == "smi")
                      for it, p in zip(items, parsed)]
        for it, p, st in zip(items, parsed, structures):
            got = p if isinstance(p, Rejected) else self._row(it, *p, st)
            (rejects if isinstance(got, Rejected) else rows).append(got)
        spectrum, has, late = self._spectra(rows)
        if late:  # peaks that numpy could not read: reject those rows, keep input order
            bad = {r.item.ordinal for r in late}
            keep = [i for i, row in enumerate(rows) if row[0] not in bad]
            rows, spectrum, has = [rows[i] for i in keep], spectrum[keep], has[keep]
            rejects = sorted(rejects + late, key=lambda r: r.item.ordinal)
        return self._assemble(rows, spectrum, has), rejects

    @staticmethod
    def _spectra(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, list[Rejected]]:
        """Target spectra of ``rows`` (float16 ``(n, 501)``, ``has_spectrum``) in one pass.

        All peak lists of the chunk are binned by one ``np.bincount`` over
        ``row * 501 + bin``; summation order, noise removal and normalization are those of
        :func:`neimsctl.io.spectrum.preprocess_spectrum`, so results are identical. When
        the chunk's peaks cannot be read as numbers, rows fall back to that function one by
        one and the unreadable ones become ``bad_peaks`` rejects.
        """
        n = len(rows)
        out = None
        has = np.zeros(n, dtype=bool)
        late: list[Rejected] = []
        where = [i for i, row in enumerate(rows) if type(row[8]) is tuple]
        # rows whose spectrum was made alone (by preprocess_spectrum): ``has`` is read from it
        alone = [i for i, row in enumerate(rows) if type(row[8]) is np.ndarray]
        try:
            mz_a = np.fromiter(chain.from_iterable([rows[i][8][0] for i in where]), np.float64)
            it_a = np.fromiter(chain.from_iterable([rows[i][8][1] for i in where]), np.float64)
            if not (np.isfinite(mz_a).all() and np.isfinite(it_a).all()) or \
                    (len(it_a) and (mz_a.min() < 0 or it_a.min() < 0 or it_a.max() > SCALE_ABOVE
                                    or ((it_a > 0) & (it_a < SCALE_BELOW)).any())):
                raise ValueError("odd values: each row alone")   # rejects, or scaled rows
        except (ValueError, TypeError):
            out = np.zeros((n, N_BINS), dtype=np.float32)
            alone += where
            for i in where:
                row = rows[i]
                try:
                    out[i] = preprocess_spectrum(*row[8])
                except (ValueError, TypeError) as exc:
                    late.append(Rejected(row[10], row[1], "bad_peaks", str(exc), row[3] or None))
            where = []
        if where:
            k = len(where)
            lens = np.fromiter((len(rows[i][8][0]) for i in where), dtype=np.int64, count=k)
            owner = np.repeat(np.arange(k, dtype=np.int64), lens)
            with np.errstate(invalid="ignore"):
                idx = np.floor(mz_a + 0.5).astype(np.int64)  # round half up
            keep = (idx >= 0) & (idx < N_BINS)
            binned = np.bincount(owner[keep] * N_BINS + idx[keep], weights=it_a[keep],
                                 minlength=k * N_BINS).astype(np.float32).reshape(k, N_BINS)
            top = binned.max(axis=1)
            pos = top > 0
            # in place, one pass each: below the noise level -> 0, then / base peak (rows
            # without a positive peak: threshold -inf and divisor 1 leave them as they are)
            thr = np.where(pos, (NOISE_LEVEL * top.astype(np.float64)).astype(np.float32),
                           np.float32(-np.inf))
            with np.errstate(invalid="ignore", divide="ignore"):
                binned[binned < thr[:, None]] = 0
                binned /= np.where(pos, top, np.float32(1))[:, None]
            if k == n:
                out = binned
            else:  # (``out`` is only made above when the peaks could not be read: no ``where``)
                out = np.zeros((n, N_BINS), dtype=np.float32)
                out[where] = binned
            has[where] = pos & np.isfinite(top)  # an infinite base peak leaves NaN: no spectrum
        if out is None:
            out = np.zeros((n, N_BINS), dtype=np.float32)
        for i in alone:
            if type(rows[i][8]) is np.ndarray:
                out[i] = rows[i][8]
        if alone:
            with np.errstate(invalid="ignore"):
                has[alone] = out[alone].max(axis=1) > 0
        out[~has] = 0
        return out.astype(np.float16), has, late

    def _parse(self, it: Item) -> tuple[str, str, dict[str, Any]] | Rejected:
        """``(id, SMILES, record)`` of one input line, or why it is rejected."""
        if it.kind == "jsonl":
            try:
                rec = orjson.loads(it.raw)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except (orjson.JSONDecodeError, ValueError) as exc:
                return Rejected(it, None, "bad_json", str(exc))
            if type(rec.get("id")) is int:  # a NIST number written as a number
                rec["id"] = str(rec["id"])
            bad = [k for k in TEXT_FIELDS if rec.get(k) is not None and type(rec[k]) is not str]
            rid = rec.get("id") if type(rec.get("id")) is str else None
            rid = clean_text(rid) if rid else f"{_stem(it.file)}:{it.nth or it.ordinal + 1}"
            name = clean_text(rec["name"]) if type(rec.get("name")) is str else None
            schema = rec.get("schema")
            if schema is not None and schema not in KNOWN_SCHEMAS:   # as index and search do
                return Rejected(it, rid, "unknown_schema", f"schema {str(schema)[:80]!r} is not one "
                                f"of {', '.join(KNOWN_SCHEMAS)}", name or None)
            if bad:
                return Rejected(it, rid, "bad_field", "; ".join(
                    f"{k} is a JSON {_json_type(rec[k])}, not a string" for k in bad), name or None)
            smiles = rec.get("smiles")
            if not smiles:
                return Rejected(it, rid, "no_structure", "record has no SMILES", name or None)
            return rid, smiles, rec
        parts = smiles_line(it.raw)
        if not parts:  # only characters str.split() takes for blanks (\x1c..\x1f, U+2028, ...)
            return Rejected(it, f"{_stem(it.file)}:{it.line}", "unparsable_smiles",
                            f"no SMILES on the line: {it.raw[:40]!r}")
        rec = {"name": clean_text(parts[1]).strip() if len(parts) > 1 else ""}
        return rec["name"] or f"{_stem(it.file)}:{it.line}", parts[0], rec

    def _row(self, it: Item, rid: str, smiles: str, rec: dict[str, Any],
             st: _Structure | tuple[str, str]) -> tuple | Rejected:
        """The row of one parsed item whose structure work is ``st``."""
        o = self.opts
        if type(st) is tuple:
            return Rejected(it, rid, st[0], st[1], rec.get("name") or None)
        formula = rec.get("formula") or st.formula()
        mw = rec.get("mw")
        if type(mw) is not int:  # absent, null, a float or text: computed (bool is no mass)
            mw = _formula_mass(formula)
            if mw is None:  # the record's formula cannot be read: the structure's own
                formula = st.formula()
                mw = formula_nominal_mass(formula)
        formula = clean_text(formula)
        if not o.min_mw <= mw <= o.max_mw:
            return Rejected(it, rid, "mw_out_of_range",
                            f"nominal mass {mw} not in {o.min_mw}..{o.max_mw}", rec.get("name") or None)
        if st.error is not None:
            return Rejected(it, rid, "featurize_failed", st.error, rec.get("name") or None)
        if it.kind == "smi":
            smiles = st.canonical()
        inchikey = clean_text(rec.get("inchikey") or (st.key() if o.inchikey else ""))
        feats = st.feats
        mz = rec.get("mz") or []
        peaks = None
        if mz:
            inten = rec.get("intensity") or []
            if type(mz) is list and type(inten) is list and len(mz) == len(inten):
                peaks = (mz, inten)  # binned for the whole chunk in _spectra
            else:  # let the one-record function decide (it raises on unusable peaks)
                try:
                    spec = preprocess_spectrum(mz, inten)
                except (ValueError, TypeError) as exc:
                    return Rejected(it, rid, "bad_peaks", str(exc), rec.get("name") or None)
                peaks = spec
        return (it.ordinal, rid, smiles, clean_text(rec.get("name") or ""), formula, inchikey or "", mw,
                ionization_energy(rec), peaks, feats, it)

    def _assemble(self, rows: list[tuple], spectrum: np.ndarray,
                  has: np.ndarray) -> dict[str, np.ndarray]:
        mode = self.opts.mode
        if not rows:
            return empty_block(mode)
        n = len(rows)
        cols = list(zip(*rows))
        out: dict[str, np.ndarray] = {"ordinal": np.asarray(cols[0], dtype=np.int64)}
        for i, name in enumerate(("id", "smiles", "name", "formula", "inchikey"), start=1):
            arr = np.empty(n, dtype=object)
            arr[:] = cols[i]
            out[name] = arr
        out["mw"] = np.asarray(cols[6], dtype=np.int32)
        out["ionization_energy"] = np.asarray(cols[7], dtype=np.float32)
        out["spectrum"], out["has_spectrum"] = spectrum, has
        feats = cols[9]
        out["ecfp"] = assemble_ecfp([f.ecfp for f in feats])
        if mode != "teacher":  # student, v1: every fixed-width field of the features tuple
            for field in feats[0]._fields[1:]:
                if field == "frags":
                    if feats[0].frags is not None:                 # left out (RowOptions)
                        out["frags"] = assemble_frags([f.frags for f in feats])
                else:
                    out[field] = np.stack([getattr(f, field) for f in feats])
        else:
            out["counts"] = np.stack([f.counts for f in feats])
            if feats[0].frags is not None:
                out["frags"] = assemble_frags([f.frags for f in feats])
            out["n_atoms"] = np.asarray([f.atom_x.shape[0] for f in feats], dtype=np.int64)
            out["n_edges"] = np.asarray([f.edge_index.shape[0] for f in feats], dtype=np.int64)
            out["atom_x"] = np.concatenate([f.atom_x for f in feats]).astype(np.float16)
            out["edge_index"] = np.concatenate([f.edge_index for f in feats])
            out["edge_attr"] = np.concatenate([f.edge_attr for f in feats]).astype(np.float16)
        return out


def smiles_line(raw: bytes) -> list[str]:
    """``[SMILES, name]`` (``[SMILES]`` without a name, ``[]`` for a blank line) of a SMILES
    line: split at the first blank or tab; a CXSMILES extension after the SMILES (``|&1:1|``,
    the ``|...|`` ChemAxon and RDKit write for coordinates or enhanced stereo) is no part of
    the name. The SMILES alone gives the structure.

    Examples
    --------
    >>> smiles_line(b"C[C@H](N)C(=O)O |&1:1| alanine")
    ['C[C@H](N)C(=O)O', 'alanine']
    """
    parts = decode_text(raw).strip().split(None, 1)
    if len(parts) > 1 and parts[1].startswith("|") and "|" in parts[1][1:]:
        name = parts[1][parts[1].index("|", 1) + 1:].strip()
        parts = [parts[0], name] if name else parts[:1]
    return parts


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def crashed(it: Item, why: str) -> Rejected:
    """The ``worker_crashed`` reject of an item whose worker process died on it (``why``: how,
    from :func:`neimsctl.io.parallel.exit_reason`); id and name are read from the raw line
    (or the MOL block's title) without RDKit."""
    rid = name = None
    if it.kind == "jsonl":
        try:
            rec = orjson.loads(it.raw)
        except orjson.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            rid = str(rec.get("id") or f"{_stem(it.file)}:{it.nth or it.ordinal + 1}")
            name = str(rec.get("name") or "") or None
    elif it.kind == "sdf":
        name = decode_text(it.raw).split("\n", 1)[0].strip() or None
        rid = name
    else:
        parts = smiles_line(it.raw)
        name = parts[1] if len(parts) > 1 else None
        rid = name or f"{_stem(it.file)}:{it.line}"
    return Rejected(it, rid, "worker_crashed", f"{why} while working on this record", name)


def one_by_one(items: list[Item]) -> list[list[Item]]:
    """A chunk as single-item chunks (:func:`neimsctl.io.parallel.ordered_map`'s ``split``)."""
    return [[it] for it in items]


def crashed_block(mode: str, items: list[Item],
                  why: str) -> tuple[dict[str, np.ndarray], list[Rejected], int]:
    """What a worker that died on ``items`` yields: no rows, ``worker_crashed`` rejects."""
    return empty_block(mode), [crashed(it, why) for it in items], len(items)


def _stem(file: str) -> str:
    if file in ("-", "<stdin>"):
        return "stdin"
    name = file.rsplit("/", 1)[-1]
    return name.split(".", 1)[0] or name
