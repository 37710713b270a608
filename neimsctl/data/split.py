"""Compound-grouped, deterministic train/val/test split (8:1:1, seed 42).

A compound is its InChIKey connectivity block (the first 14 characters,
:func:`neimsctl.io.inchikey.connectivity_blocks`), so stereoisomers and
isotopologues of one skeleton, and every spectrum of one compound, land on the same side. The side
is a pure function of ``(seed, block)``: a keyed BLAKE2b hash of the block mapped to ``[0, 1)`` and
cut at the cumulative fractions. It therefore does not depend on record order, on how the records
are spread over shard files, or on which other compounds are present.

Records without an InChIKey are grouped by their record id instead (each is its own compound).

Cross-fitting (K-fold out-of-fold soft labels, issue 18): :func:`fold_codes` assigns every
compound one of K folds, by another keyed hash of its block, so a model trained with
``data.fold = "k/K"`` never sees the training compounds of fold k, and ``softlabel`` lets it
label exactly those (:func:`parse_fold`, :func:`train_positions`).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, NamedTuple

import numpy as np

from neimsctl.errors import ConfigError
from neimsctl.io.inchikey import connectivity_blocks

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 42                         #: the seed every training stage splits with
SPLIT_NAMES = ("train", "val", "test")


class Split(NamedTuple):
    """Index arrays (int64, ascending) into the sequence that was split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def block_unit(block: bytes, seed: int = SPLIT_SEED) -> float:
    """Map ``(seed, block)`` to a number in ``[0, 1)``, stable across runs and platforms."""
    digest = hashlib.blake2b(block, digest_size=8, key=str(int(seed)).encode()).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_blocks(blocks: Iterable[bytes], *, seed: int = SPLIT_SEED,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """Split code per element: 0 train, 1 val, 2 test.

    Parameters
    ----------
    blocks
        Group keys (connectivity blocks) as bytes or str; one hash per distinct key.
    seed
        Split seed; the same seed always gives the same assignment of a given key.
    fractions
        Train, val and test shares of *compounds*; must be non-negative and sum to 1.

    Returns
    -------
    numpy.ndarray
        int8 codes, one per element of ``blocks``.

    Raises
    ------
    ConfigError
        Fractions that are negative or do not sum to 1.
    """
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or (frac < 0).any() or abs(frac.sum() - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    arr = np.asarray([b.encode() if isinstance(b, str) else bytes(b) for b in blocks], dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int8)
    uniq, inverse = np.unique(arr.astype(bytes), return_inverse=True)
    units = np.fromiter((block_unit(bytes(b), seed) for b in uniq), dtype=float, count=len(uniq))
    cuts = np.cumsum(frac)[:2]
    codes = np.searchsorted(cuts, units, side="right").astype(np.int8)
    return codes[inverse.reshape(-1)]


def split_indices(blocks: Iterable[bytes], *, ids: Iterable[bytes] | None = None,
                  seed: int = SPLIT_SEED,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> Split:
    """Train/val/test index arrays grouped by connectivity block.

    Parameters
    ----------
    blocks
        Connectivity blocks (or full InChIKeys; only the first 14 characters are used), one per
        record, e.g. ``StudentDataset.blocks``.
    ids
        Record ids, used as the group key of records whose block is empty.
    seed, fractions
        See :func:`assign_blocks`.

    Returns
    -------
    Split
        ``(train, val, test)`` ascending int64 index arrays that together cover every record once.

    Examples
    --------
    >>> s = split_indices([b"AAAAAAAAAAAAAA", b"AAAAAAAAAAAAAA", b"BBBBBBBBBBBBBB"])
    >>> sorted(np.concatenate(s).tolist())
    [0, 1, 2]
    """
    keys = connectivity_blocks(blocks, as_bytes=True).tolist()
    if ids is not None:
        ids = list(ids)
        keys = [k if k else b"id:" + (i.encode() if isinstance(i, str) else bytes(i))
                for k, i in zip(keys, ids)]
    codes = assign_blocks(keys, seed=seed, fractions=fractions)
    return Split(*(np.flatnonzero(codes == c).astype(np.int64) for c in range(3)))


#: Added to the split seed for the fold hash: folds are independent of the train/val/test cut.
FOLD_SALT = 1_000_003


def parse_fold(text: str | None) -> tuple[int, int] | None:
    """``"k/K"`` (1 <= k <= K, K >= 2) -> ``(k, K)``; ``None``/empty -> ``None``.

    Raises
    ------
    ConfigError
        Anything else.
    """
    if text is None or str(text).strip() == "":
        return None
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"data.fold {text!r}: expected k/K, e.g. 2/5") from None
    if n < 2 or not 1 <= k <= n:
        raise ConfigError(f"data.fold {text!r}: need K >= 2 and 1 <= k <= K")
    return k, n


def fold_codes(blocks: Iterable[bytes], n_folds: int, *, seed: int = SPLIT_SEED,
               ids: Iterable[bytes] | None = None) -> np.ndarray:
    """Fold (0 .. K-1) of each record's compound: a pure function of ``(seed, block)``, like
    the split itself (records without a block are grouped by id, as :func:`split_indices`)."""
    keys = connectivity_blocks(blocks, as_bytes=True).tolist()
    if ids is not None:
        keys = [k if k else b"id:" + (i.encode() if isinstance(i, str) else bytes(i))
                for k, i in zip(keys, ids)]
    if not keys:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(np.asarray(keys, dtype=object).astype(bytes), return_inverse=True)
    units = np.fromiter((block_unit(bytes(b), seed + FOLD_SALT) for b in uniq), dtype=float,
                        count=len(uniq))
    return np.minimum((units * n_folds).astype(np.int64), n_folds - 1)[inverse.reshape(-1)]


def train_positions(train: np.ndarray, blocks: np.ndarray, fold: tuple[int, int] | None, *,
                    seed: int = SPLIT_SEED, ids: np.ndarray | None = None) -> np.ndarray:
    """The training positions of a run with ``data.fold = (k, K)``: ``train`` without the
    compounds of fold k (all of ``train`` when ``fold`` is None)."""
    if fold is None:
        return train
    k, n = fold
    codes = fold_codes(blocks[train], n, seed=seed, ids=None if ids is None else ids[train])
    return train[codes != k - 1]
