"""eval's Recall@K ranks and search's hit lists come from one engine, so they agree."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.evaluate.matching import Score
from neimsctl.evaluate.metrics import connectivity_blocks, library_match
from neimsctl.io.peak_block import PeakBlock
from neimsctl.io.spectra import load_spectra
from neimsctl.io.spectral_index import IndexWriter, SpectralIndex
from neimsctl.io.spectrum_records import SpectrumRecord
from neimsctl.search.run import QueryBatch, SearchOptions, search_library


def memory_index(spectra: np.ndarray, keys: np.ndarray, mw: np.ndarray) -> SpectralIndex:
    w = IndexWriter("agreement", in_memory=True, run_peaks=1 << 62)
    src = w.add_source("lib", "measured")
    n = len(spectra)
    w.add(PeakBlock.from_dense(spectra), mw=mw, predicted=[False] * n, source=[src] * n, inchikey=keys,
          ids=[str(i) for i in range(n)], names=[""] * n, smiles=[""] * n, formula=[""] * n)
    w.close()
    return SpectralIndex("agreement", h5file=w.file)


def ranks_from_hits(lib: SpectralIndex, topk, query_blocks: np.ndarray) -> np.ndarray:
    """NEIMS rank from a hit list: 1 + distinct other compounds scoring above the right one's best."""
    blocks = connectivity_blocks(k.decode() for k in lib.inchikeys)
    out = []
    for scores, index, qb in zip(topk.scores, topk.index, query_blocks):
        ok = index >= 0
        s, comp = scores[ok], blocks[index[ok]]
        right = s[comp == qb].max() if (comp == qb).any() else 0.0
        out.append(1 + len(set(comp[(s > right) & (comp != qb)])))
    return np.asarray(out)


@pytest.fixture(scope="module")
def data(sample_msp):
    return load_spectra(sample_msp)


@pytest.mark.parametrize("score, mass_filter", [
    (Score("cosine"), None), (Score("cosine"), 5.0), (Score("composite"), 5.0), (Score("entropy"), None),
    (Score("composite", reverse=True), None), (Score("entropy", reverse=True), 5.0)])
def test_eval_ranks_equal_search_ranks(data, score: Score, mass_filter) -> None:
    keep = data.mw > 0
    spectra, keys, mw = data.spectra[keep], data.keys[keep], data.mw[keep]
    rng = np.random.default_rng(1)
    qrows = rng.choice(len(spectra), size=30, replace=False)
    queries = spectra[qrows] * rng.uniform(0.5, 1.5, size=(30, spectra.shape[1])).astype(np.float32)
    queries /= queries.max(axis=1, keepdims=True)
    ev = library_match(queries, keys[qrows], mw[qrows], spectra, keys, mw, ks=(1, 5, 10),
                       mass_filter=mass_filter, score=score)
    lib = memory_index(spectra, keys, mw)
    recs = [SpectrumRecord("q", 0, i, str(i)) for i in range(30)]
    batch = QueryBatch(recs, PeakBlock.from_dense(queries), mw[qrows].astype(np.float64))
    top = search_library(lib, batch, SearchOptions(score, top=len(spectra), mass_filter=mass_filter))
    ranks = ranks_from_hits(lib, top, connectivity_blocks(keys[qrows]))
    np.testing.assert_array_equal(ranks, ev["ranks"])
    for k in (1, 5, 10):
        assert ev[f"recall@{k}"] == pytest.approx(float((ranks <= k).mean()))
