"""zstd feature-block streams ``neimsctl.zblock/1`` for pipes (formats/zblock.v1.md is normative).

A stream is a sequence of frames. Every frame has a 20-byte header::

    magic b"NZBK" | version u8 = 1 | kind u8 (b"H" header, b"D" data, b"E" end) | 2 zero bytes
    | json_len u32 LE | payload_len u64 LE

then ``json_len`` bytes of UTF-8 JSON and ``payload_len`` bytes of payload. The first frame
(``H``) carries the schema, mode, featurizer settings, settings hash and provenance. Each ``D``
frame holds one feature block: its JSON lists the arrays (name, dtype, shape, offset, nbytes in
the decompressed payload) and the payload is one zstd frame (level 3, with checksum) of the
arrays' bytes. The ``E`` frame holds the total row count; a stream without it is truncated.
String columns are stored as ``uint32`` LE byte lengths followed by the UTF-8 bytes.
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any, Iterator

import numpy as np
import zstandard

from neimsctl.errors import FormatError
from neimsctl.io.featblock import STR_COLUMNS, block_rows, check_mode, validate_block

SCHEMA = "neimsctl.zblock/1"
MAGIC, VERSION = b"NZBK", 1
_HEAD = struct.Struct("<4sBcxxIQ")
LEVEL = 3


def _frame(kind: bytes, meta: dict[str, Any], payload: bytes = b"") -> bytes:
    js = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return _HEAD.pack(MAGIC, VERSION, kind, len(js), len(payload)) + js + payload


def _encode_str(col: np.ndarray) -> bytes:
    data = [str(s).encode("utf-8") for s in col]
    return np.asarray([len(d) for d in data], dtype="<u4").tobytes() + b"".join(data)


def _decode_str(buf: bytes, n: int) -> np.ndarray:
    lens = np.frombuffer(buf[:4 * n], dtype="<u4")
    ends = np.cumsum(lens) + 4 * n
    out = np.empty(n, dtype=object)
    start = 4 * n
    for i, end in enumerate(ends):
        out[i] = buf[start:end].decode("utf-8")
        start = int(end)
    return out


class ZBlockWriter:
    """Write a block stream to a binary stream (``sys.stdout.buffer``, a file ...).

    Parameters
    ----------
    out
        Binary stream.
    mode, settings, settings_hash
        As in :class:`neimsctl.io.h5shard.ShardWriter`.
    attrs
        Further header fields (provenance, ``shard``); ``None`` values are skipped.
    """

    def __init__(self, out: IO[bytes], mode: str, settings: dict[str, Any], settings_hash: str,
                 attrs: dict[str, Any] | None = None) -> None:
        self.out, self.mode, self.n_rows, self.n_blocks = out, check_mode(mode), 0, 0
        self._cctx = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
        head = {"schema": SCHEMA, "mode": mode, "featurizer": settings,
                "settings_hash": settings_hash}
        head.update({k: v for k, v in (attrs or {}).items() if v is not None})
        out.write(_frame(b"H", head))

    def write(self, block: dict[str, np.ndarray]) -> None:
        """Write one data frame holding ``block``."""
        block = validate_block(block, self.mode)
        n = block_rows(block)
        if n == 0:
            return
        arrays, parts, offset = [], [], 0
        for name, arr in block.items():
            raw = _encode_str(arr) if name in STR_COLUMNS else np.ascontiguousarray(arr).tobytes()
            dtype = "utf8" if name in STR_COLUMNS else arr.dtype.str
            arrays.append({"name": name, "dtype": dtype, "shape": list(arr.shape),
                           "offset": offset, "nbytes": len(raw)})
            parts.append(raw)
            offset += len(raw)
        payload = self._cctx.compress(b"".join(parts))
        self.out.write(_frame(b"D", {"rows": n, "arrays": arrays}, payload))
        self.n_rows += n
        self.n_blocks += 1

    def close(self) -> None:
        """Write the end frame (the stream is complete only after this)."""
        self.out.write(_frame(b"E", {"rows": self.n_rows, "blocks": self.n_blocks}))
        self.out.flush()


def _read_exact(inp: IO[bytes], n: int, what: str, name: str) -> bytes:
    buf = inp.read(n)
    while buf is not None and len(buf) < n:
        more = inp.read(n - len(buf))
        if not more:
            break
        buf += more
    if buf is None or len(buf) < n:
        raise FormatError(f"truncated stream: {what} cut short ({len(buf or b'')} of {n} bytes)",
                          file=name)
    return buf


class ZBlockReader:
    """Read a block stream: ``header`` at once, then iterate over blocks.

    Concatenated streams (``cat a.zst b.zst``) are read as one when their settings hashes agree.

    Raises
    ------
    FormatError
        Wrong magic or version, corrupt payload, mismatched concatenation, or a truncated
        stream (no end frame).
    """

    def __init__(self, inp: IO[bytes], name: str = "<stdin>") -> None:
        self.inp, self.name = inp, name
        self._dctx = zstandard.ZstdDecompressor()
        kind, meta, _ = self._next(first=True)
        if kind != b"H" or meta.get("schema") != SCHEMA:
            raise FormatError(f"stream does not start with a {SCHEMA} header frame", file=name)
        self.header: dict[str, Any] = meta
        self.mode: str = check_mode(meta["mode"])
        self.settings_hash: str = meta["settings_hash"]
        self.n_rows = 0

    def _next(self, first: bool = False) -> tuple[bytes, dict[str, Any], bytes] | None:
        head = self.inp.read(_HEAD.size)
        if not head:
            if first:
                raise FormatError("empty stream: no zblock header", file=self.name)
            return None
        if len(head) < _HEAD.size and not MAGIC.startswith(head[:len(MAGIC)]):
            raise FormatError(f"bad magic {head[:len(MAGIC)]!r} (expected {MAGIC!r}): not a zblock "
                              "stream", file=self.name)
        if len(head) < _HEAD.size:
            head += _read_exact(self.inp, _HEAD.size - len(head), "frame header", self.name)
        magic, version, kind, jlen, plen = _HEAD.unpack(head)
        if magic != MAGIC:
            raise FormatError(f"bad magic {magic!r} (expected {MAGIC!r}): not a zblock stream",
                              file=self.name)
        if version != VERSION:
            raise FormatError(f"unsupported zblock version {version} (this reader: {VERSION})",
                              file=self.name)
        meta = json.loads(_read_exact(self.inp, jlen, "frame JSON", self.name))
        payload = _read_exact(self.inp, plen, "frame payload", self.name) if plen else b""
        return kind, meta, payload

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            frame = self._next()
            if frame is None:
                raise FormatError(f"truncated stream: no end frame after {self.n_rows} rows",
                                  file=self.name)
            kind, meta, payload = frame
            if kind == b"D":
                yield self._decode(meta, payload)
            elif kind == b"E":
                if meta.get("rows") != self.n_rows:
                    raise FormatError(f"end frame says {meta.get('rows')} rows, read "
                                      f"{self.n_rows}", file=self.name)
                nxt = self._next()
                if nxt is None:
                    return
                if nxt[0] != b"H" or nxt[1].get("settings_hash") != self.settings_hash:
                    raise FormatError("concatenated stream with different settings", file=self.name)
                self.n_rows = 0
            else:
                raise FormatError(f"unexpected frame kind {kind!r}", file=self.name)

    def _decode(self, meta: dict[str, Any], payload: bytes) -> dict[str, np.ndarray]:
        try:
            raw = self._dctx.decompress(payload)
        except zstandard.ZstdError as exc:
            raise FormatError(f"corrupt block payload: {exc}", file=self.name) from exc
        n, out = int(meta["rows"]), {}
        for a in meta["arrays"]:
            buf = raw[a["offset"]:a["offset"] + a["nbytes"]]
            if a["dtype"] == "utf8":
                out[a["name"]] = _decode_str(buf, n)
            else:
                out[a["name"]] = np.frombuffer(buf, dtype=a["dtype"]).reshape(a["shape"]).copy()
        self.n_rows += n
        return out
