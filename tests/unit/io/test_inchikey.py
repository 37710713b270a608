"""The one InChIKey connectivity-block function: edge cases pinned, and every user agrees with it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from neimsctl.io.inchikey import BLOCK_LEN, connectivity_block, connectivity_blocks
from neimsctl.io.spectrum import N_BINS

KEY = "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
BLOCK = "BSYNRYMUTXBXSQ"

# (key, its block): the behaviour every caller (split, eval, datasets, distill) relies on
CASES = [
    (KEY, BLOCK),                       # a full key is cut after the first block
    (BLOCK, BLOCK),                     # a block is its own block
    (KEY.lower(), BLOCK),               # lower case is upper-cased
    (KEY.encode(), BLOCK),              # bytes as str
    (np.bytes_(KEY.encode()), BLOCK),   # numpy scalars too
    (np.str_(KEY), BLOCK),
    (f" \t{KEY}\n", BLOCK),             # surrounding whitespace is removed before the cut
    (b"  " + KEY.encode() + b"\r\n", BLOCK),
    ("BSYN", "BSYN"),                   # shorter keys stay short (not padded)
    ("bsyn ", "BSYN"),
    ("", ""),                           # missing keys are empty
    ("   ", ""),
    (b"", ""),
    (None, ""),
    ("BSYNRYMUTXBX Q-UHFFFAOYSA-N", "BSYNRYMUTXBX Q"),  # inner whitespace is kept (cut by position)
]


@pytest.mark.parametrize(("key", "block"), CASES)
def test_block_of_one_key(key: object, block: str) -> None:
    assert connectivity_block(key) == block  # type: ignore[arg-type]


def test_arrays_give_the_same_blocks_as_single_keys_in_both_dtypes() -> None:
    keys = [k for k, _ in CASES]
    want = [b for _, b in CASES]
    text = connectivity_blocks(keys)
    assert text.dtype == np.dtype(f"<U{BLOCK_LEN}") and text.tolist() == want
    raw = connectivity_blocks(keys, as_bytes=True)
    assert raw.dtype == np.dtype(f"S{BLOCK_LEN}") and raw.tolist() == [b.encode() for b in want]
    # numpy string arrays take the vectorised path: same answer
    str_keys = [k.decode() if isinstance(k, bytes) else ("" if k is None else str(k)) for k in keys]
    assert connectivity_blocks(np.array(str_keys)).tolist() == want
    assert connectivity_blocks(np.array([k.encode() for k in str_keys])).tolist() == want
    assert connectivity_blocks(np.array(str_keys, dtype=object), as_bytes=True).tolist() == \
        [b.encode() for b in want]


def test_empty_input_and_generators() -> None:
    assert connectivity_blocks([]).shape == (0,)
    assert connectivity_blocks(np.zeros(0, dtype="S1"), as_bytes=True).dtype == np.dtype("S14")
    assert connectivity_blocks(k for k in [KEY, None]).tolist() == [BLOCK, ""]


def test_non_ascii_never_raises() -> None:
    # not part of any valid key; the bytes pass through, text shows U+FFFD
    assert connectivity_blocks(["é" + KEY], as_bytes=True)[0] == "é".encode() + BLOCK[:12].encode()
    assert connectivity_block(b"\xff" + KEY.encode()) == "\ufffd" + BLOCK[:13]


def test_split_eval_and_datasets_use_it(tmp_path) -> None:
    """A compound is the same compound for the split, for eval's library matching and for the
    datasets, whatever case or padding its keys have."""
    from neimsctl.data.split import split_indices
    from neimsctl.evaluate.metrics import library_match

    keys = [KEY, KEY.lower(), f" {BLOCK}-XXXXXXXXXX-N ", "AAAAAAAAAAAAAA-UHFFFAOYSA-N"]
    for seed in range(20):
        parts = split_indices(keys, seed=seed)
        side = {i: s for s, idx in enumerate(parts) for i in idx}
        assert side[0] == side[1] == side[2]
    spectra = np.eye(3, N_BINS, dtype=np.float32)
    res = library_match(spectra[:1], [KEY.lower()], None, spectra, [BLOCK, "A" * 14, "B" * 14], None)
    assert res["ranks"].tolist() == [1]

    from neimsctl.data.dataset import StudentDataset
    from neimsctl.data.split_export import first_per_compound

    assert first_per_compound(np.array(keys, dtype=object)).tolist() == [0, 3]
    path = tmp_path / "s.h5"
    _shard(path, keys)
    ds = StudentDataset([path])
    assert ds.blocks.tolist() == [BLOCK.encode()] * 3 + [b"A" * 14]


def _shard(path, keys: list[str]) -> None:
    """A student shard of JSONL records carrying these InChIKeys (featurize trusts a record's)."""
    import orjson

    from neimsctl.chem.rowbuild import Item, RowBuilder, RowOptions
    from neimsctl.io.h5shard import ShardWriter

    builder = RowBuilder(RowOptions(mode="student"))
    items = [Item(i, "test", i + 1, "jsonl", orjson.dumps(
        {"id": f"r{i}", "smiles": "CCCCO", "inchikey": k, "mz": [31.0, 56.0], "intensity": [1.0, 0.5]}))
        for i, k in enumerate(keys)]
    block, rejects = builder.build(items)
    assert not rejects, rejects
    with ShardWriter(path, "student", builder.feat.settings, builder.feat.settings_hash) as sw:
        sw.append(block)
    with h5py.File(path) as f:
        assert [k.decode() for k in f["inchikey"][:]] == keys


def test_stated_inchikey_drops_the_prefix_and_refuses_what_is_no_key():
    from neimsctl.io.inchikey import stated_inchikey

    assert stated_inchikey(" InChIKey=uhovqnzjysornb-UHFFFAOYSA-N ") == "UHOVQNZJYSORNB-UHFFFAOYSA-N"
    assert stated_inchikey("UHOVQNZJYSORNB") == "UHOVQNZJYSORNB"
    assert [stated_inchikey(t) for t in ("N/A", "-", "", "12345", "InChIKey=")] == [None] * 5
