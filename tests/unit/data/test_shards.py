"""shard_settings: the one check that a stage's shards share a mode it reads and a featurizer."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from neimsctl.data.membench import build_sample_shard
from neimsctl.chem.features import settings_hash
from neimsctl.data.shards import hash_matches, shard_settings
from neimsctl.errors import FormatError, InputError

TEACHER = ("teacher",)
STUDENT = ("student", "v1")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shards")
    return {m: build_sample_shard(d / f"{m}.h5", mode=m, limit=5) for m in ("teacher", "student", "v1")}


def test_returns_the_common_mode_and_hash(shards: dict[str, Path]) -> None:
    with h5py.File(shards["teacher"]) as f:
        own = f.attrs["settings_hash"]
        settings = json.loads(f.attrs["featurizer"])
    got = shard_settings([shards["teacher"]] * 2, TEACHER, stage="finetune")
    assert got[:2] == ("teacher", own)
    # models trained before fragment masses read these shards too: the hash without them
    del settings["frags"]
    assert got.accepts == {own, settings_hash(settings)} and len(got.accepts) == 2
    assert hash_matches(settings_hash(settings), got.accepts) and not hash_matches("0" * 16, got.accepts)
    got = shard_settings([shards["v1"]], STUDENT, stage="distill")
    assert got.mode == "v1" and len(got.settings_hash) == 16 and got.accepts == {got.settings_hash}


def test_refuses_another_mode_and_says_how_to_make_the_right_one(shards: dict[str, Path]) -> None:
    with pytest.raises(FormatError, match=r"shard mode is 'student'; finetune needs "
                                          r"`neimsctl featurize --mode teacher` shards"):
        shard_settings([shards["teacher"], shards["student"]], TEACHER, stage="finetune")
    with pytest.raises(FormatError, match=r"distill needs `neimsctl featurize --mode student` "
                                          r"\(or `--mode v1`\) shards"):
        shard_settings([shards["teacher"]], STUDENT, stage="distill")


def test_refuses_a_mix_of_modes_or_featurizers(shards: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="differ in mode or featurizer settings"):
        shard_settings([shards["student"], shards["v1"]], STUDENT, stage="distill")
    other = tmp_path / "other.h5"
    other.write_bytes(shards["teacher"].read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs["settings_hash"] = "0" * 16
    with pytest.raises(FormatError, match="differ in featurizer settings"):
        shard_settings([shards["teacher"], other], TEACHER, stage="softlabel")


def test_no_shards_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no feature shards"):
        shard_settings([], TEACHER, stage="finetune")
