"""search over an index's stored weights (format 2) gives the hits of its peak lists (format 1)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from neimsctl.evaluate.matching import Score
from neimsctl.io.peak_block import PeakBlock
from neimsctl.io.spectra import load_spectra
from neimsctl.io.spectral_index import IndexWriter, SpectralIndex, _members, _write_dense
from neimsctl.io.spectrum_records import SpectrumRecord
from neimsctl.search import run
from neimsctl.search.run import QueryBatch, SearchOptions, search_library


def write_index(path, spectra: np.ndarray, keys: np.ndarray, mw: np.ndarray, block: int | None) -> SpectralIndex:
    """``block``: entries per block of stored weights; ``None``: a version-1 file (peaks only)."""
    w = IndexWriter(path)
    src = w.add_source("lib", "measured")
    n = len(spectra)
    w.add(PeakBlock.from_dense(spectra), mw=mw, predicted=[False] * n, source=[src] * n, inchikey=keys,
          ids=[str(i) for i in range(n)], names=[""] * n, smiles=[""] * n, formula=[""] * n)
    w.close()
    w.file.close()
    with h5py.File(path, "a") as f:
        for key in ("dense", "dense_ptr", "dense_width"):
            del f[key]
        if block is None:
            f.attrs["schema"] = "neimsctl.index/1"
            del f.attrs["dense_block"], f.attrs["dense_weights"]
        else:
            _write_dense(f, n, block)
    return SpectralIndex(path)


@pytest.fixture(scope="module")
def libs(sample_msp, tmp_path_factory):
    data = load_spectra(sample_msp)
    keep = data.mw > 0
    spectra, keys, mw = data.spectra[keep], data.keys[keep], data.mw[keep]
    d = tmp_path_factory.mktemp("stored")
    return (spectra, keys, mw, write_index(d / "v2.h5", spectra, keys, mw, 64),
            write_index(d / "v1.h5", spectra, keys, mw, None))


def noisy_queries(spectra: np.ndarray, mw: np.ndarray, seed: int, n: int = 25) -> QueryBatch:
    """``n`` library spectra with every intensity scaled by 0.6-1.4 (base peak 1 again), as queries."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(spectra), size=n, replace=False)
    queries = spectra[rows] * rng.uniform(0.6, 1.4, size=(n, spectra.shape[1])).astype(np.float32)
    queries /= queries.max(axis=1, keepdims=True)
    return QueryBatch([SpectrumRecord("q", 0, i, str(i)) for i in range(n)], PeakBlock.from_dense(queries),
                      mw[rows].astype(np.float64))


def amx_only() -> None:
    from neimsctl.io import native

    if not native.amx():
        pytest.skip("no AMX tiles here (or the native kernel is not built)")


def spy_fused_pass(monkeypatch) -> list:
    """Record what each call of the fused AMX pass gets: ``np.ndarray`` for weights read in
    advance (``product_select``), ``tuple`` for a run of blocks that the kernel reads from the
    file (``product_select_run``)."""
    from neimsctl.evaluate import matching

    seen: list = []
    real, run_real = matching.product_select, matching.product_select_run
    monkeypatch.setattr(matching, "product_select", lambda q, bits, *a: seen.append(type(bits)) or real(q, bits, *a))
    monkeypatch.setattr(matching, "product_select_run", lambda *a: seen.append(tuple) or run_real(*a))
    return seen


@pytest.mark.parametrize("mass_filter", [None, 5.0])
@pytest.mark.parametrize("candidates", [False, True])
def test_stored_weights_give_the_hits_of_the_peak_lists(libs, mass_filter, candidates, monkeypatch) -> None:
    spectra, keys, mw, v2, v1 = libs
    batch = noisy_queries(spectra, mw, seed=3)
    opts = SearchOptions(Score(), top=10, mass_filter=mass_filter,
                         candidates={k.decode()[:14] for k in v2.inchikeys[::3] if k} if candidates else None)
    used = []
    real = run._dense_chunks
    monkeypatch.setattr(run, "_dense_chunks", lambda *a, **k: used.append(1) or real(*a, **k))
    a = search_library(v2, batch, opts)
    assert bool(used)                         # the stored weights were read (a third of the entries: enough)
    b = search_library(v1, batch, opts)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-12)
    assert (a.index[:, 0] >= 0).all() or candidates


@pytest.mark.parametrize("mass_filter", [None, 5.0])
def test_the_native_product_gives_the_hits_of_the_float32_one(libs, mass_filter, monkeypatch) -> None:
    """The first pass on AMX tiles (neimsctl/io/_native.c) and numpy's float32 product over the
    same stored weights: the same hits and scores (the exact stage decides both)."""
    from neimsctl.evaluate import matching

    amx_only()
    spectra, keys, mw, v2, _ = libs
    batch = noisy_queries(spectra, mw, seed=5, n=40)
    opts = SearchOptions(Score(), top=10, mass_filter=mass_filter)
    calls = spy_fused_pass(monkeypatch)
    a = search_library(v2, batch, opts)
    assert calls                    # the fused AMX pass (product and candidate selection) ran
    monkeypatch.setattr(matching, "product", lambda q, lib: None)
    monkeypatch.setattr(matching, "amx", lambda: False)
    b = search_library(v2, batch, opts)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("mass_filter", [None, 5.0])
@pytest.mark.parametrize("top", [1, 10])
def test_the_deferred_exact_stage_gives_the_hits_of_the_per_block_one(libs, mass_filter, top, monkeypatch) -> None:
    """The exact stage at the end over the candidates' peaks (native kernel: matching._Deferred)
    and the exact stage per block over every block's peaks: the same hits and scores."""
    from neimsctl.io import native

    if native.module() is None:
        pytest.skip("the native kernel is not built here")
    spectra, keys, mw, v2, _ = libs
    batch = noisy_queries(spectra, mw, seed=7, n=40)
    opts = SearchOptions(Score(), top=top, mass_filter=mass_filter,
                         candidates={k.decode()[:14] for k in v2.inchikeys[::2] if k})
    reads = []
    real = SpectralIndex.peaks
    monkeypatch.setattr(SpectralIndex, "peaks", lambda self, *a: reads.append(1) or real(self, *a))
    a = search_library(v2, batch, opts)
    from neimsctl.evaluate import matching

    # the candidates' peaks were read at the end, once by each lane that has some
    assert 1 <= len(reads) <= matching._lanes()
    at_end = len(reads)
    monkeypatch.setattr(matching, "_DEFER_MAX_K", top - 1)     # more hits asked for: per block
    b = search_library(v2, batch, opts)
    assert len(reads) == at_end
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_peaks_of_spans_are_those_of_the_blocks(libs) -> None:
    from neimsctl.errors import FormatError

    *_, v2, v1 = libs
    for lib in (v2, v1):
        whole = lib.block(0, lib.n)
        rows = np.array([5, 0, 77, 76, lib.n - 1])
        ptr = lib._peak_ptr(0, lib.n)
        got = lib.peaks(ptr[rows], ptr[rows + 1] - ptr[rows])
        want = whole.take(rows)
        np.testing.assert_array_equal(got.ptr, want.ptr)
        np.testing.assert_array_equal(got.mz, want.mz)
        np.testing.assert_array_equal(got.intensity, want.intensity)
        assert len(lib.peaks(np.zeros(0, np.int64), np.zeros(0, np.int64))) == 0
        with pytest.raises(FormatError, match="out of range"):
            lib.peaks(np.array([int(ptr[-1])]), np.array([1]))
        entries = np.array([0, 5, 76, 77, 4000 % lib.n, lib.n - 1])
        entries = np.unique(entries)
        got = lib.entry_peaks(entries)
        want = whole.take(entries)
        np.testing.assert_array_equal(got.ptr, want.ptr)
        np.testing.assert_array_equal(got.mz, want.mz)
        assert len(lib.entry_peaks(np.zeros(0, np.int64))) == 0
        with pytest.raises(FormatError, match="entry out of range"):
            lib.entry_peaks(np.array([lib.n]))


def test_damaged_peak_offsets_of_a_candidate_are_named(libs, tmp_path) -> None:
    """The deferred exact stage reads its candidates' peak offsets (not every block's): offsets
    that run backwards there are a 'damaged index' error naming the entry."""
    import shutil

    import h5py

    from neimsctl.errors import FormatError

    *_, v2, _ = libs
    path = tmp_path / "ptr.h5"
    shutil.copy(v2.path, path)
    with h5py.File(path, "a") as f:
        ptr = f["peak_ptr"][:]
        ptr[8] = ptr[7] - 1         # entry 7 ends before it starts
        f["peak_ptr"][:] = ptr
    with SpectralIndex(path) as ix:
        with pytest.raises(FormatError, match="peak offsets of entry 7 out of range"):
            ix.entry_peaks(np.array([3, 7, 20]))


def test_peak_lists_are_read_for_few_entries_and_other_scores(libs) -> None:
    *_, v2, _ = libs
    n = v2.n
    assert run._dense_blocks(v2, [(0, n)], Score()) == [0, 1, 2, 3, 4]
    assert run._dense_blocks(v2, [(10, 20), (130, 200)], Score()) == [0, 2, 3]
    assert run._dense_blocks(v2, [(0, 1), (100, 101)], Score()) is None        # a short candidate list
    assert run._dense_blocks(v2, [(0, n)], Score(mz_power=0.5)) is None      # weights of other powers
    assert run._dense_blocks(v2, [(0, n)], Score("entropy")) is None
    assert run._dense_blocks(v2, [(0, n)], Score(reverse=True)) is None


def test_candidate_membership_few_and_many() -> None:
    rng = np.random.default_rng(0)
    keys = np.array(["".join(rng.choice(list("ABCDEF"), 14)) for _ in range(3000)], dtype="S14")
    for n in (0, 3, 64, 65, 900):
        want = np.unique(np.concatenate([keys[:n], np.array([b"ZZZZZZZZZZZZZZ"], dtype="S14")]))
        np.testing.assert_array_equal(_members(keys, want), np.isin(keys, want))


@pytest.mark.parametrize("opts", [dict(candidates={"NOSUCHKEYBLOCK"}), dict(source="predicted")])
def test_the_work_estimate_counts_only_allowed_entries(libs, opts, monkeypatch) -> None:
    """A candidate list or source filter bounds the work that decides the bfloat16 pass (a
    two-compound candidate search over 1.59M entries imported torch for it: 4.7 s, now 0.5)."""
    *_, v2, _ = libs
    seen = []
    monkeypatch.setattr(run, "use_bf16", lambda score, work: seen.append(work) or False)
    batch = QueryBatch([SpectrumRecord("q", 0, 0, "0")], v2.block(0, 1), np.array([np.nan]))
    reads = []
    real = SpectralIndex.key_blocks
    monkeypatch.setattr(SpectralIndex, "key_blocks", lambda self, *a: reads.append(1) or real(self, *a))
    o = SearchOptions(Score(), top=5, **opts)
    a = search_library(v2, batch, o)
    assert seen == [0.0] and (a.index < 0).all()          # nothing allowed: no work, no hits
    search_library(v2, batch, o)
    assert len(reads) == (1 if "candidates" in opts else 0)   # the keys matched once per library


def test_a_candidate_list_is_matched_once_for_its_check_and_its_search(libs, tmp_path, monkeypatch) -> None:
    *_, v2, _ = libs
    keys = sorted({k.decode()[:14] for k in v2.inchikeys[:5] if k})
    (tmp_path / "c.txt").write_text("\n".join(keys + ["ZZZZZZZZZZZZZZ"]) + "\n")
    v2._matches = None
    reads = []
    real = SpectralIndex.key_blocks
    monkeypatch.setattr(SpectralIndex, "key_blocks", lambda self, *a: reads.append(1) or real(self, *a))
    blocks, problems = run.read_candidates(tmp_path / "c.txt", [v2])
    assert [(r.file, r.line, r.record, r.reason, r.detail) for r in problems] == [
        (str(tmp_path / "c.txt"), len(keys) + 1, "ZZZZZZZZZZZZZZ", "candidate_not_found", "matches no library entry")]
    mask = run._allowed_mask(v2, SearchOptions(Score(), candidates=blocks))
    want = np.isin(np.array([k[:14] for k in v2.inchikeys]), np.array(keys, dtype="S14"))
    np.testing.assert_array_equal(mask, want)
    assert len(reads) == 1


@pytest.mark.parametrize("mass_filter", [None, 5.0])
@pytest.mark.parametrize("opts", [dict(), dict(reverse=True)])
def test_the_composites_floor_from_the_stored_cosine_keeps_the_hits(libs, mass_filter, opts, monkeypatch) -> None:
    """A composite search of an index with stored weights first scores each query's best cosine
    entries by the composite (a floor its hits reach): the hits equal those of an index without
    stored weights (no floor) and of the same index with the floor turned off."""
    spectra, keys, mw, v2, v1 = libs
    batch = noisy_queries(spectra, mw, seed=5)
    o = SearchOptions(Score("composite", **opts), top=10, mass_filter=mass_filter)
    floors = []
    real = run._warm_floor
    monkeypatch.setattr(run, "_warm_floor", lambda *a: floors.append(real(*a)) or floors[-1])
    a = search_library(v2, batch, o)
    assert len(floors) == 1 and np.isfinite(floors[0]).sum() >= (20 if mass_filter is None else 5)
    assert (a.scores[:, -1] >= floors[0] - 1e-9).all()                    # a floor the hits reach
    b = search_library(v1, batch, o)
    assert floors[1:] == [None]                                           # no stored weights: none
    monkeypatch.setattr(run, "_warm_floor", lambda *a: None)
    c = search_library(v2, batch, o)
    for other in (b, c):
        np.testing.assert_array_equal(a.index, other.index)
        np.testing.assert_allclose(a.scores, other.scores, rtol=1e-14)


@pytest.mark.parametrize("gap", [1, 4, 256])
def test_take_reads_scattered_entries_in_runs(libs, gap) -> None:
    *_, v2, _ = libs
    whole = v2.block(0, v2.n)
    for entries in (np.array([0, 1, 2, 50, 51, v2.n - 1]), np.arange(0, v2.n, 7), np.array([], dtype=np.int64)):
        got, want = v2.take(entries, gap=gap), whole.take(entries)
        np.testing.assert_array_equal(got.ptr, want.ptr)
        np.testing.assert_array_equal(got.mz, want.mz)
        np.testing.assert_array_equal(got.intensity, want.intensity)


@pytest.mark.parametrize("mass_filter", [None, 5.0])
def test_lanes_and_weights_read_by_the_kernel_give_the_same_hits(libs, mass_filter, monkeypatch) -> None:
    """With AMX tiles, the deferred first pass reads each block's weights itself (lazy chunks)
    and runs in lanes, one per CPU, each with its own running top-k: the hits and scores of one
    lane, of three, and of the weights read in advance are the same."""
    from neimsctl.evaluate import matching

    amx_only()
    spectra, keys, mw, v2, _ = libs
    batch = noisy_queries(spectra, mw, seed=11, n=60)
    opts = SearchOptions(Score(), top=5, mass_filter=mass_filter)
    sources = spy_fused_pass(monkeypatch)
    got = []
    for lanes in (1, 3):
        monkeypatch.setattr(matching, "_lanes", lambda n=lanes: n)
        got.append(search_library(v2, batch, opts))
    assert set(sources) == {tuple}
    monkeypatch.setattr(run, "amx", lambda: False)     # the reader thread reads the weights in advance
    got.append(search_library(v2, batch, opts))
    assert set(sources) == {tuple, np.ndarray}
    for other in got[1:]:
        np.testing.assert_array_equal(got[0].index, other.index)
        np.testing.assert_array_equal(got[0].scores, other.scores)


def test_an_index_cut_while_searched_is_named_by_the_kernels_read(libs, tmp_path) -> None:
    """An index file cut short after it was opened: the kernel's read of a block's weights fails
    and the search says which block, as the reader's read does."""
    import os
    import shutil

    from neimsctl.errors import FormatError

    amx_only()
    spectra, keys, mw, v2, _ = libs
    path = tmp_path / "cut.h5"
    shutil.copy(v2.path, path)
    batch = noisy_queries(spectra, mw, seed=3, n=10)
    with SpectralIndex(path) as ix:
        os.truncate(path, ix._dense_raw + 2 * int(ix.dense_ptr[2]) + 100)
        with pytest.raises(FormatError, match="cannot read stored weights of block 2: .*shorter"):
            search_library(ix, batch, SearchOptions(Score(), top=5))


def test_only_the_searched_blocks_peak_offsets_are_checked_and_the_damaged_one_is_named(libs, tmp_path) -> None:
    """Damaged peak offsets in a block no query reaches do not stop a search (as without the
    native kernel); in a searched block they are one error naming that block's entries."""
    import shutil

    import h5py

    from neimsctl.errors import FormatError

    spectra, keys, mw, v2, _ = libs
    path = tmp_path / "ptr.h5"
    shutil.copy(v2.path, path)
    last = len(v2.dense_width) - 1
    with h5py.File(path, "a") as f:
        ptr = f["peak_ptr"][:]
        at = last * v2.dense_block + 3
        ptr[at + 1] = ptr[at] - 1
        f["peak_ptr"][:] = ptr
    light = np.flatnonzero(mw < mw[last * v2.dense_block] - 20)[:5]      # far below the last block
    batch = QueryBatch([SpectrumRecord("q", 0, i, str(i)) for i in range(len(light))],
                       PeakBlock.from_dense(spectra[light]), mw[light].astype(np.float64))
    with SpectralIndex(path) as ix:
        assert len(search_library(ix, batch, SearchOptions(Score(), top=3, mass_filter=5.0)).index)
        lo = last * v2.dense_block
        with pytest.raises(FormatError, match=f"peak offsets of entries {lo}\\.\\.{v2.n - 1} out of range"):
            search_library(ix, batch, SearchOptions(Score(), top=3))


def test_entry_texts_of_a_chunked_meta_dataset_are_read(libs, tmp_path) -> None:
    """An index whose entry texts are stored chunked and compressed (valid HDF5, not what
    `index` writes) is read through h5py (it was taken for a damaged index)."""
    import shutil

    import h5py

    *_, v2, _ = libs
    path = tmp_path / "meta.h5"
    shutil.copy(v2.path, path)
    with h5py.File(path, "a") as f:
        data = f["meta"][:]
        del f["meta"]
        f.create_dataset("meta", data=data, chunks=True, compression="gzip")
    with SpectralIndex(path) as ix:
        got = ix.entries(np.array([0, 5, ix.n - 1]))
    assert got == v2.entries(np.array([0, 5, v2.n - 1]))


def test_reading_an_index_after_close_says_it_was_closed(libs, tmp_path) -> None:
    """Another thread's close() during a search: the reads say the index was closed (a bare
    AssertionError, or a 'damaged index' with EBADF, before)."""
    import errno
    import shutil

    from neimsctl.errors import InputError

    *_, v2, _ = libs
    path = tmp_path / "closed.h5"
    shutil.copy(v2.path, path)
    ix = SpectralIndex(path)
    ix.close()
    with pytest.raises(InputError, match="the index was closed"):
        ix.dense_chunk(0, check=False)
    assert "the index was closed" in str(ix._unreadable(0, OSError(errno.EBADF, "Bad file descriptor")))


def test_runs_of_any_length_give_the_same_hits(libs, monkeypatch) -> None:
    """A lane's blocks go to the kernel in runs of up to matching._RUN blocks, shorter when
    their (query, entry) pairs reach matching._RUN_PAIRS (an unfiltered search: a block a run,
    so that an interrupt is felt soon): runs of one block, of three and of the default give
    the same hits and scores."""
    from neimsctl.evaluate import matching

    amx_only()
    spectra, keys, mw, v2, _ = libs
    batch = noisy_queries(spectra, mw, seed=13, n=50)
    opts = SearchOptions(Score(), top=7)
    lengths: list[int] = []
    real = matching._Lane.add_run
    monkeypatch.setattr(matching._Lane, "add_run", lambda self, q, run, *a: lengths.append(len(run)) or
                        real(self, q, run, *a))
    want = search_library(v2, batch, opts)
    for blocks, pairs in ((1, 1 << 40), (3, 1 << 40), (16, 1)):
        monkeypatch.setattr(matching, "_RUN", blocks)
        monkeypatch.setattr(matching, "_RUN_PAIRS", pairs)
        lengths.clear()
        got = search_library(v2, batch, opts)
        assert lengths and max(lengths) <= (1 if pairs == 1 else blocks)
        np.testing.assert_array_equal(got.index, want.index)
        np.testing.assert_array_equal(got.scores, want.scores)
