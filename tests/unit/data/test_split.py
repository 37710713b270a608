"""Compound-grouped deterministic split: no compound crosses splits; ~8:1:1 on the DEV data."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.data.split import assign_blocks, block_unit, split_indices
from neimsctl.io.inchikey import connectivity_block
from neimsctl.errors import ConfigError


def _keys(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype="S1")
    return [b"".join(rng.choice(letters, 14)) + b"-UHFFFAOYSA-N" for _ in range(n)]


def _crossing(keys, split) -> set[bytes]:
    sides = {}
    for side, idx in enumerate(split):
        for i in idx:
            sides.setdefault(connectivity_block(keys[i]), set()).add(side)
    return {k for k, s in sides.items() if len(s) > 1}


def test_partition_no_block_crosses_and_order_does_not_matter():
    base = _keys(400)
    keys = base + [k[:14] + b"-XXXXXXXXXX-N" for k in base[:100]] + base[:50]   # stereo/dup
    split = split_indices(keys)
    assert sorted(np.concatenate(split).tolist()) == list(range(len(keys)))
    assert not _crossing(keys, split)
    perm = np.random.default_rng(1).permutation(len(keys))
    shuffled = split_indices([keys[i] for i in perm])
    side = {connectivity_block(keys[i]): s for s, idx in enumerate(split) for i in idx}
    for s, idx in enumerate(shuffled):
        assert all(side[connectivity_block(keys[perm[i]])] == s for i in idx)


def test_seed_and_fractions():
    keys = _keys(2000)
    assert not np.array_equal(assign_blocks(keys, seed=42), assign_blocks(keys, seed=43))
    assert np.array_equal(assign_blocks(keys), assign_blocks(list(keys)))
    assert block_unit(b"LCIWBVUWLVMMOZ") == block_unit(b"LCIWBVUWLVMMOZ", 42)
    assert (assign_blocks(keys, fractions=(1.0, 0.0, 0.0)) == 0).all()
    with pytest.raises(ConfigError):
        assign_blocks(keys, fractions=(0.5, 0.1, 0.1))


def test_missing_inchikey_groups_by_id():
    split = split_indices([b"", b"", b""], ids=[b"a", b"b", b"a"])
    side = {i: s for s, idx in enumerate(split) for i in idx}
    assert side[0] == side[2]


def test_dev_data_8_1_1_by_compound(shared_data):
    keys = [line[10:].strip().encode() for line in
            (shared_data / "massbank_ei.msp").read_text(encoding="utf-8").splitlines()
            if line.startswith("InChIKey: ")]
    assert len(keys) == 8196
    split = split_indices(keys)
    assert not _crossing(keys, split)
    compounds = [{connectivity_block(keys[i]) for i in idx} for idx in split]
    n = sum(len(c) for c in compounds)
    assert n == 6379
    shares = np.array([len(c) for c in compounds]) / n
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.02), shares


def test_split_of_a_dataset(tmp_path):
    from _shards import sample_shard
    from neimsctl.data.dataset import StudentDataset

    ds = StudentDataset(sample_shard(tmp_path / "s.h5", limit=120))
    train, val, test = split_indices(ds.blocks, ids=ds.ids)
    assert len(train) + len(val) + len(test) == len(ds) and len(train) > len(test)
    part = ds.subset(val)
    assert set(part.blocks.tolist()).isdisjoint(ds.subset(train).blocks.tolist())


def test_folds_partition_the_training_part_by_compound() -> None:
    from neimsctl.data.split import fold_codes, parse_fold, train_positions

    blocks = np.array([f"{i % 97:014d}".encode() for i in range(1000)], dtype="S14")
    codes = fold_codes(blocks, 5)
    assert codes.min() == 0 and codes.max() == 4
    assert (fold_codes(blocks[::-1], 5) == codes[::-1]).all()          # order-free
    for b in np.unique(blocks):                                        # one fold per compound
        assert len(set(codes[blocks == b])) == 1
    train = np.arange(0, 1000, 2)
    kept = [train_positions(train, blocks, (k, 5)) for k in range(1, 6)]
    left_out = [np.setdiff1d(train, x) for x in kept]
    assert sorted(np.concatenate(left_out).tolist()) == train.tolist()  # each row left out once
    assert train_positions(train, blocks, None) is train
    assert parse_fold("2/5") == (2, 5) and parse_fold(None) is None and parse_fold("") is None
    for bad in ("0/5", "6/5", "1/1", "a/b", "3"):
        with pytest.raises(ConfigError, match="data.fold"):
            parse_fold(bad)
