"""The index format: write/read round trip (spilled runs and in memory alike), refusal of other
versions and damaged files, and the batch binning against the 501-bin preprocessing."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from neimsctl.errors import FormatError, InputError
from neimsctl.io.peak_block import PeakBlock, bf16_bits, bin_batch, check_peaks, cosine_weights
from neimsctl.io.spectral_index import SCHEMA, IndexWriter, SpectralIndex, _write_dense, open_index
from neimsctl.io.spectrum import preprocess_spectrum


def entries(n: int, seed: int = 0) -> tuple[PeakBlock, np.ndarray]:
    rng = np.random.default_rng(seed)
    mz = [rng.choice(np.arange(10, 300), size=int(rng.integers(1, 30)), replace=False) for _ in range(n)]
    it = [rng.random(len(m)) + 0.01 for m in mz]
    return bin_batch(mz, it), rng.integers(-1, 40, size=n)


def write(path, block: PeakBlock, mw: np.ndarray, run_peaks: int) -> None:
    w = IndexWriter(path, run_peaks=run_peaks)
    src = w.add_source("lib.msp", "measured")
    for lo in range(0, len(block), 37):
        hi = min(lo + 37, len(block))
        part = block.slice(lo, hi)
        w.add(part, mw=mw[lo:hi], predicted=[i % 2 == 0 for i in range(lo, hi)], source=[src] * (hi - lo),
              inchikey=[f"KEY{i:011d}-UHFFFAOYSA-N" for i in range(lo, hi)], ids=[f"id{i}" for i in range(lo, hi)],
              names=[f"name {i}" for i in range(lo, hi)], smiles=["C"] * (hi - lo), formula=["CH4"] * (hi - lo))
    w.close()
    w.file.close()


@pytest.mark.parametrize("run_peaks", [50, 1 << 30])   # many spilled runs / one run in memory
def test_round_trip_sorted_by_mass(tmp_path, run_peaks: int) -> None:
    block, mw = entries(300)
    write(tmp_path / "ix.h5", block, mw, run_peaks)
    with open_index(tmp_path / "ix.h5") as ix:
        assert ix.n == 300 and (np.diff(ix.mw) >= 0).all()
        got = ix.block(0, ix.n)
        meta = ix.entries(np.arange(ix.n))
        rows = [int(s[2:]) for s in meta["id"]]
        # stable: input order within one mass
        for m in np.unique(ix.mw):
            r = np.asarray(rows)[ix.mw == m]
            assert (np.diff(r) > 0).all()
        np.testing.assert_array_equal(np.asarray(rows), np.argsort(mw, kind="stable"))
        np.testing.assert_array_equal(got.to_dense(), block.to_dense()[rows])
        assert meta["name"][5] == f"name {rows[5]}" and meta["inchikey"][0].startswith("KEY")
        assert meta["kind"][0] == ("predicted" if rows[0] % 2 == 0 else "measured")
        assert ix.predicted.sum() == 150 and meta["file"][0] == "lib.msp"
        lo, hi = ix.window(np.array([10.0]), 2)
        assert set(ix.mw[lo[0]:hi[0]]) <= {8, 9, 10, 11, 12} and ((ix.mw >= 8) & (ix.mw <= 12)).sum() == hi[0] - lo[0]
        chunks = list(ix.chunks(64))
        assert [s for s, _ in chunks] == [0, 64, 128, 192, 256]
        assert PeakBlock.concat([b for _, b in chunks]).to_dense().tolist() == got.to_dense().tolist()


def test_other_versions_and_damaged_files_are_refused(tmp_path) -> None:
    block, mw = entries(20)
    path = tmp_path / "ix.h5"
    write(path, block, mw, 1 << 30)
    with h5py.File(path, "a") as f:
        f.attrs["schema"] = "neimsctl.index/3"
    with pytest.raises(FormatError, match="neimsctl.index/3.*not supported"):
        SpectralIndex(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema"] = SCHEMA
        del f["intensity"]
    with pytest.raises(FormatError, match="damaged index: missing datasets intensity"):
        SpectralIndex(path)
    write(path, block, mw, 1 << 30)
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(FormatError, match="not finished"):
        SpectralIndex(path)
    write(path, block, mw, 1 << 30)
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="not a neimsctl index"):
        SpectralIndex(tmp_path / "cut.h5")
    (tmp_path / "text.msp").write_text("Name: x\nNum Peaks: 1\n10 10\n")
    with pytest.raises(FormatError, match="not a neimsctl index"):
        SpectralIndex(tmp_path / "text.msp")
    with h5py.File(tmp_path / "shard.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(FormatError, match="no 'schema' attribute"):
        SpectralIndex(tmp_path / "shard.h5")
    with pytest.raises(InputError, match="no such file"):
        SpectralIndex(tmp_path / "missing.h5")


@pytest.mark.parametrize("block_size", [7, 4096])
def test_stored_weights_are_the_cosine_weights_in_bfloat16(tmp_path, block_size: int) -> None:
    """Every block of stored weights equals the bf16 rounding of the cosine weights of its
    entries' peaks; ``take`` gathers any entries' peaks; blocks of entries without peaks are empty."""
    block, mw = entries(60)
    path = tmp_path / "ix.h5"
    write(path, block, mw, 1 << 30)
    if block_size != 4096:
        with h5py.File(path, "a") as f:
            for key in ("dense", "dense_ptr", "dense_width"):
                del f[key]
            _write_dense(f, 60, block_size)
    with open_index(path) as ix:
        assert ix.dense_block == block_size and ix.dense_powers == (1.0, 0.5)
        stored = []
        for b in range(-(-ix.n // block_size)):
            start, chunk = ix.dense_chunk(b)
            assert start == b * block_size and chunk.weights.dtype == np.uint16
            assert chunk.weights.shape[1] == int(ix.block(start, start + len(chunk)).mz.max()) + 1
            full = np.zeros((len(chunk), 501), dtype=np.uint16)
            full[:, :chunk.weights.shape[1]] = chunk.weights
            stored.append(full)
            assert chunk.block.to_dense().tolist() == ix.block(start, start + len(chunk)).to_dense().tolist()
            _, as_float = ix.dense_chunk(b, float32=True)
            np.testing.assert_array_equal(as_float.weights, (chunk.weights.astype(np.uint32) << 16).view(np.float32))
        peaks = ix.block(0, ix.n)
        want = np.zeros((ix.n, 501), dtype=np.uint16)
        want[peaks.row_of_peak(), peaks.mz.astype(int)] = bf16_bits(cosine_weights(peaks))
        np.testing.assert_array_equal(np.concatenate(stored), want)
        dense = peaks.to_dense()
        assert peaks.take(np.array([5, 2, 5])).to_dense().tolist() == dense[[5, 2, 5]].tolist()
        assert len(peaks.take([])) == 0


def test_version_1_files_read_and_damaged_weights_refused(tmp_path) -> None:
    block, mw = entries(30)
    path = tmp_path / "ix.h5"
    write(path, block, mw, 1 << 30)
    with h5py.File(path, "a") as f:
        f["dense"][3] = 0x7FC0                      # a NaN among the stored weights
    with open_index(path) as ix, pytest.raises(FormatError, match="stored weights of block 0 are not unit vectors"):
        ix.dense_chunk(0)
    with h5py.File(path, "a") as f:
        f["dense_ptr"][1] = 5
    with pytest.raises(FormatError, match="damaged index: the stored weights disagree"):
        SpectralIndex(path)
    with h5py.File(path, "a") as f:
        del f["dense_width"]
    with pytest.raises(FormatError, match="damaged index: missing the stored weights"):
        SpectralIndex(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema"] = "neimsctl.index/1"      # a version-1 file: peak lists only
        del f.attrs["dense_block"]
    with open_index(path) as ix:
        assert ix.dense_block is None and ix.n == 30


def test_bin_batch_equals_preprocess_spectrum() -> None:
    mz = [[77.5, 78.2, 12.0, 500.4], [10, 10, 11, 11.4], [300.0]]
    it = [[1.0, 2.0, 0.0005, 4.0], [1.0, 1.0, 0.001, 0.5], [7.0]]
    got = bin_batch(mz, it).to_dense()
    for row, (m, i) in zip(got, zip(mz, it)):
        np.testing.assert_allclose(row, preprocess_spectrum(m, i), rtol=1e-6)
    # intensities beyond float32, a bin's sum beyond float64: the same normalised spectra
    mz = [[91.0, 91.0, 65.0], [91.0, 92.0], [91.0, 92.0], [41.0]]
    it = [[1e308, 1e308, 1e306], [1e-300, 5e-301], [1e300, 1.0], [3.0]]
    assert all(check_peaks(m, i) is None for m, i in zip(mz, it))   # finite values, not "not finite"
    got = bin_batch(mz, it).to_dense()
    assert np.isfinite(got).all() and (got.max(axis=1) == 1.0).all()
    for row, (m, i) in zip(got, zip(mz, it)):
        np.testing.assert_allclose(row, preprocess_spectrum(m, i), rtol=1e-6)
    assert got[0, 65] == pytest.approx(0.005, rel=1e-5) and got[1, 92] == 0.5
    # lists of Python numbers (one conversion for all), arrays and a mix: the same block
    mixed = [np.asarray(mz[0]), mz[1], tuple(mz[2]), mz[3]]
    for a, b in zip(bin_batch(mz, it), bin_batch(mixed, [np.asarray(x) for x in it])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mz, it, reason", [
    ([], [], "no_peaks"), ([10], [0.0], "no_peaks"), (["a"], [1], "non_numeric_peak"),
    ([10, 11], [1], "invalid_peak"), ([10], [-1], "invalid_peak"), ([float("nan")], [1], "invalid_peak"),
    ([10, 600], [1, 1], "mz_above_range")])
def test_check_peaks_reasons(mz, it, reason) -> None:
    assert check_peaks(mz, it)[0] == reason
    assert check_peaks([10, 500.4], [1, 2]) is None
    assert check_peaks([10, 600], [1, 1], above_range=True) is None
    assert check_peaks([600], [1], above_range=True)[0] == "no_peaks"


def damaged_copy(tmp_path, name: str, change) -> SpectralIndex:
    block, mw = entries(50)
    path = tmp_path / name
    write(path, block, mw, 1 << 30)
    with h5py.File(path, "a") as f:
        change(f)
    return path


def _zero_row(f) -> None:
    w = int(f["dense_width"][0])
    f["dense"][w:2 * w] = 0                      # entry 1's weights zeroed, lengths intact


def _as_float32(f) -> None:
    data = f["dense"][:].astype(np.float32)
    del f["dense"]
    f.create_dataset("dense", data=data)


def _other_powers(f) -> None:
    f.attrs["dense_weights"] = '{"score": "cosine", "mz_power": 1.0, "intensity_power": 1.0, "dtype": "bfloat16"}'


@pytest.mark.parametrize("change, message", [
    (_zero_row, "stored weights of block 0 are not unit vectors"),
    (_as_float32, "stored weights of type float32"),
    (_other_powers, "are not supported"),
    (lambda f: f.attrs.__setitem__("n_bins", 600), "n_bins=600"),
    (lambda f: f.attrs.__setitem__("dense_block", 2 ** 64 - 1), "dense_block="),
    (lambda f: f.attrs.__setitem__("dense_weights", "[" * 200_000), "bad dense_block/dense_weights"),
    (lambda f: (f.__delitem__("dense"), f.create_group("dense")), "missing the stored weights \\(dense\\)"),
])
def test_damaged_stored_weights_are_refused_in_one_line(tmp_path, change, message) -> None:
    path = damaged_copy(tmp_path, "ix.h5", change)
    with pytest.raises(FormatError, match=message):
        with open_index(path) as ix:
            for b in range(-(-ix.n // ix.dense_block)):
                ix.dense_chunk(b)


def test_a_version_1_file_ignores_stored_weights_it_holds(tmp_path) -> None:
    def to_v1(f) -> None:
        f.attrs["schema"] = "neimsctl.index/1"
        f.attrs["dense_block"] = 0                # would be refused in a version-2 file
    with open_index(damaged_copy(tmp_path, "v1.h5", to_v1)) as ix:
        assert ix.dense_block is None and len(ix.block(0, ix.n)) == 50


def test_reads_go_to_the_file_opened_even_if_the_path_is_replaced(tmp_path) -> None:
    block, mw = entries(40)
    path = tmp_path / "ix.h5"
    write(path, block, mw, 1 << 30)
    with open_index(path) as ix:
        before = ix.block(0, ix.n).to_dense()
        _, chunk = ix.dense_chunk(0)
        other, mw2 = entries(300, seed=9)
        write(tmp_path / "new.h5", other, mw2, 1 << 30)
        (tmp_path / "new.h5").replace(path)       # rebuilt in place while open
        assert ix.block(0, ix.n).to_dense().tolist() == before.tolist()
        np.testing.assert_array_equal(ix.dense_chunk(0)[1].weights, chunk.weights)


def _bad_key(f) -> None:
    keys = f["inchikey"][:]
    keys[3] = b"\xbd" * 27                         # not UTF-8
    f["inchikey"][:] = keys


def _huge_offset(f) -> None:
    ptr = f["meta_ptr"][:]
    ptr[4] = 2 ** 62                               # an entry's text "ends" past the file
    f["meta_ptr"][:] = ptr


def _bad_row(f) -> None:
    f["row"][5] = 2 ** 60                          # an entry pointing at no text row


@pytest.mark.parametrize("change", [_bad_key, _huge_offset, _bad_row])
def test_damaged_entry_data_is_refused_in_one_line(tmp_path, change) -> None:
    """Damaged entry data met when hits are written (found by corrupting bytes of a real index:
    IndexError, UnicodeDecodeError, MemoryError escaped before) names the file."""
    path = damaged_copy(tmp_path, "ix.h5", change)
    with pytest.raises(FormatError, match="damaged index") as err:
        with open_index(path) as ix:
            ix.entries(np.arange(ix.n))
    assert str(path) in str(err.value)


def _bad_source(f) -> None:
    f["source"][7] = 9                             # an input file the index does not list


@pytest.mark.parametrize("change", [_bad_source])
def test_damaged_source_is_refused_in_one_line(tmp_path, change) -> None:
    path = damaged_copy(tmp_path, "ix.h5", change)
    with pytest.raises(FormatError, match="damaged index: source 9"):
        with open_index(path) as ix:
            ix.entries(np.arange(ix.n))


@pytest.mark.parametrize("in_memory", [False, True])     # read from the file / through h5py
def test_per_entry_data_read_where_needed_equals_the_datasets(tmp_path, in_memory: bool, monkeypatch) -> None:
    """Only the masses are held: peak offsets, rows, text offsets and sources are read for the
    blocks and hits asked for, in runs of nearby entries; the same values as the datasets."""
    block, mw = entries(300, seed=3)
    write(tmp_path / "ix.h5", block, mw, 1 << 30)
    monkeypatch.setattr(SpectralIndex, "_GAP", 5)          # several runs even in 300 entries
    if in_memory:
        raw = (tmp_path / "ix.h5").read_bytes()
        h5 = h5py.File(__import__("io").BytesIO(raw), "r")
        ix = SpectralIndex(tmp_path / "ix.h5", h5file=h5)
        assert ix._fd is None
    else:
        ix = open_index(tmp_path / "ix.h5")
        assert ix._ptr.raw is not None and ix._row.raw is not None
    with ix, h5py.File(tmp_path / "ix.h5", "r") as f:
        assert not any(isinstance(v, np.ndarray) and len(v) >= ix.n for k, v in vars(ix).items() if k != "mw")
        pick = np.array([0, 1, 2, 40, 41, 150, 299])
        np.testing.assert_array_equal(ix._take(ix._row, pick), f["row"][:][pick])
        np.testing.assert_array_equal(ix._take(ix._meta_ptr, pick), f["meta_ptr"][:][pick])
        np.testing.assert_array_equal(ix._slice(ix._ptr, 10, 20), f["peak_ptr"][10:20])
        got = ix.entries(pick[::-1])
        text = f["meta"][:].tobytes()
        ptr, rows = f["meta_ptr"][:], f["row"][:]
        want = [__import__("json").loads(text[ptr[r]:ptr[r + 1]])["id"] for r in rows[pick[::-1]]]
        assert got["id"] == want
        assert got["kind"] == ["predicted" if p else "measured" for p in f["predicted"][:][pick[::-1]]]
        assert ix.predicted.tolist() == f["predicted"][:].astype(bool).tolist()
        np.testing.assert_array_equal(ix.block(17, 90).to_dense(), block.to_dense()[rows[17:90]])
        keys = np.concatenate(list(ix.key_blocks(step=64)))
        assert keys.tolist() == [k[:14] for k in f["inchikey"][:].tolist()]


def test_an_unchecked_block_is_checked_before_its_first_use(tmp_path) -> None:
    """``dense_chunk(check=False)`` leaves the check to the block's user: the first pass over it
    (matching._stored_pass, via DenseChunk.check) checks it first, so damaged weights are
    refused there too; a sound block passes."""
    from neimsctl.evaluate.matching import Score, search_blocks

    block, mw = entries(30)
    path = tmp_path / "ix.h5"
    write(path, block, mw, 1 << 30)
    with open_index(path) as ix:
        start, chunk = ix.dense_chunk(0, check=False)
        assert not chunk.checked
        chunk.check()
        assert chunk.checked
    with h5py.File(path, "a") as f:
        f["dense"][3] = 0x7FC0                      # a NaN among the stored weights
    with open_index(path) as ix:
        start, chunk = ix.dense_chunk(0, check=False)
        with pytest.raises(FormatError, match="stored weights of block 0 are not unit vectors"):
            search_blocks(ix.block(0, 3), [(start, chunk)], Score(), 5)


def test_mass_windows_are_those_of_the_real_bounds(tmp_path) -> None:
    """window() searches the integer masses with integer bounds (ceil / floor of the real ones):
    the same entry ranges as a search with the real bounds, for fractional masses and
    tolerances, masses beyond any entry's and beyond the masses' integer type."""
    block, mw = entries(300, seed=3)
    write(tmp_path / "ix.h5", block, mw, 1 << 30)
    rng = np.random.default_rng(5)
    masses = np.concatenate([rng.uniform(-5, 50, 200), rng.integers(0, 45, 100).astype(float),
                             [0.0, 39.5, 1e12, -1e12, 2.0**31, 2.0**31 - 1]])
    with open_index(tmp_path / "ix.h5") as ix:
        assert ix.mw.dtype.kind in "iu"
        for tol in (0.0, 0.4, 0.5, 1.0, 2.5, 5.0, 1e9):
            want_lo = np.searchsorted(ix.mw, np.maximum(masses - tol, 0.0) - 1e-9, "left")
            want_hi = np.searchsorted(ix.mw, masses + tol + 1e-9, "right")
            lo, hi = ix.window(masses, tol)
            np.testing.assert_array_equal(lo, want_lo)
            np.testing.assert_array_equal(hi, want_hi)
