"""The InChIKey connectivity block: what identifies a compound for splits, eval and library matching.

An InChIKey is ``AAAAAAAAAAAAAA-BBBBBBBBSA-N``; its first block (14 characters) hashes the
connectivity (the skeleton), so stereoisomers and isotopologues of one compound share it. Every
place that groups or pairs spectra by compound (the train/val/test split, ``eval``, the
validation of training runs, the transfer set of ``distill``) computes blocks here.

The block of a key is computed on its bytes (a ``str`` is UTF-8 encoded; ``None`` is empty):

- surrounding ASCII whitespace is removed,
- the first :data:`BLOCK_LEN` bytes are kept (shorter keys stay shorter; empty stays empty),
- ASCII letters are upper-cased.

For valid keys (ASCII) that is "strip, first 14 characters, upper case". Non-ASCII bytes, never
part of a valid key, pass through unchanged in ``bytes`` blocks and become U+FFFD in ``str``
blocks. The arrays are computed with :mod:`numpy.strings`, so a million keys take well under a
second.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

__all__ = ["BLOCK_LEN", "connectivity_block", "connectivity_blocks", "is_inchikey", "stated_inchikey"]

BLOCK_LEN = 14


def _key_bytes(key: Any) -> bytes:
    if key is None:
        return b""
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    return str(key).encode("utf-8")


def _bytes_array(keys: Iterable[Any]) -> np.ndarray:
    """``keys`` as a numpy bytes (``S``) array; numpy string arrays without a Python loop."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "U":
        try:
            return keys.astype(f"S{max(keys.dtype.itemsize // 4, 1)}")  # ASCII: the fast path
        except UnicodeEncodeError:
            pass
    raw = [_key_bytes(k) for k in keys]
    return np.array(raw, dtype=bytes) if raw else np.zeros(0, dtype="S1")


def connectivity_blocks(keys: Iterable[str | bytes | None], *, as_bytes: bool = False) -> np.ndarray:
    """Connectivity block of each key (full InChIKeys or blocks; see the module docstring).

    Parameters
    ----------
    keys
        InChIKeys as ``str``, ``bytes`` or ``None`` (missing), in any iterable or numpy array.
    as_bytes
        Return fixed-width bytes (``S14``, compact: what datasets keep in memory) instead of
        ``str`` (``<U14``).

    Returns
    -------
    numpy.ndarray
        ``<U14`` (or ``S14``), one block per key; ``""`` for a missing or blank key.

    Examples
    --------
    >>> connectivity_blocks(["BSYNRYMUTXBXSQ-UHFFFAOYSA-N", b" bsynrymutxbxsq ", None]).tolist()
    ['BSYNRYMUTXBXSQ', 'BSYNRYMUTXBXSQ', '']
    """
    raw = _bytes_array(keys)
    blocks = np.strings.upper(np.strings.strip(raw)).astype(f"S{BLOCK_LEN}")
    if as_bytes:
        return blocks
    try:
        return blocks.astype(f"<U{BLOCK_LEN}")
    except UnicodeDecodeError:
        text = [b.decode("ascii", "replace") for b in blocks.ravel().tolist()]
        return np.array(text, dtype=f"<U{BLOCK_LEN}").reshape(blocks.shape)


def connectivity_block(key: str | bytes | None) -> str:
    """The connectivity block of one key (see :func:`connectivity_blocks`).

    Examples
    --------
    >>> connectivity_block("BSYNRYMUTXBXSQ-UHFFFAOYSA-N")
    'BSYNRYMUTXBXSQ'
    """
    return str(connectivity_blocks([key])[0])


_SHAPE = re.compile(r"[A-Z]{14}(?:-[A-Z]{10}-[A-Z])?")


def is_inchikey(text: str) -> bool:
    """``text`` has the shape of an InChIKey or of its first block, in any case (not checked:
    its hashes; surrounding whitespace is not stripped).

    Examples
    --------
    >>> is_inchikey("bsynrymutxbxsq"), is_inchikey("BSYNRYMUTXBXSQ-UHFFFAOYSA-N"), is_inchikey("N/A")
    (True, True, False)
    """
    # the length first: str.upper() makes 'ß' two letters
    return len(text) in (BLOCK_LEN, 27) and _SHAPE.fullmatch(text.upper()) is not None


def stated_inchikey(text: str) -> str | None:
    """A key as a file states it, upper-cased, without the ``InChIKey=`` prefix the InChI tools
    write; ``None`` when it is no InChIKey nor first block (``N/A``, ``-``, a number): such a key
    names no compound and pairs with nothing.

    Examples
    --------
    >>> stated_inchikey("InChIKey=bsynrymutxbxsq-uhfffaoysa-n"), stated_inchikey("N/A")
    ('BSYNRYMUTXBXSQ-UHFFFAOYSA-N', None)
    """
    key = text.strip()
    if key.upper().startswith("INCHIKEY="):
        key = key[len("INCHIKEY="):].strip()
    return key.upper() if is_inchikey(key) else None
