"""Memory planning and measurement for training data and models (``neimsctl membench``).

Three parts:

- :func:`estimate`: memory needs per setting (model x dataset mode x batch size) from the shard
  layout (contract 2), the model sizes of SPEC.md and a few stated constants, with a verdict.
- :func:`benchmark`: real RSS (psutil) of building and iterating a dataset on N samples.
- :func:`compare`: lazy vs in-memory, each benchmarked in a fresh subprocess.

Shards for the benchmark come from ``--shards`` or, without them, from the bundled sample
(:func:`build_sample_shard`, through the ``featurize`` library code), replicated up to N rows
(:func:`replicate_shard`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1024**2
# -- constants used by estimate(); each says where it comes from -----------------------------
PARAMS = {"teacher": 15_000_000, "student": 50_000_000}       # SPEC.md "Models" (~15M, ~50M)
PARAM_SOURCE = "SPEC.md model sizes (teacher ~15M, student ~50M)"
TRAIN_BYTES_PER_PARAM = 16     # fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4
MEAN_ATOMS, MEAN_EDGES = 14.8, 29.9   # heavy atoms / directed edges per molecule, measured on
#                                       massbank_ei.msp (DEV, 8196 records) with RDKit; replaced
#                                       by the real means when --shards are given
ID_BYTES = 16                  # fixed-width id per row (NIST17 IDs <= 6 digits; accessions ~20)
PREFETCH = 2                   # batches in flight (DataLoader prefetch_factor default)
FITS, TIGHT = 0.70, 0.90       # share of --ram-gb: <= 70% fits, <= 90% tight, else does not fit
STUDENT_BOTTLENECK = 100       # expert residual block 6144 -> 100 -> 6144 (SPEC.md suggestion)


def _chunk_cache() -> int:
    """HDF5 chunk cache per open dataset of the shard reader."""
    from neimsctl.io.h5shard.read import CHUNK_CACHE

    return CHUNK_CACHE


def student_activation_floats() -> int:
    """Floats kept for backward per sample by the ~50M MoE student (upper bound, all experts).

    input 6144; gate 512 + 128 + 4; 4 experts x 6 residual blocks x (6144 in + 2 x 100 bottleneck
    + 6144 out); head 2048 + 1024 + 501 (SPEC.md "Models", bottlenecked experts).
    """
    block = 6144 + 2 * STUDENT_BOTTLENECK + 6144
    return 6144 + (512 + 128 + 4) + 4 * 6 * block + (2048 + 1024 + 501)


def teacher_activation_floats(atoms: float = MEAN_ATOMS, edges: float = MEAN_EDGES) -> float:
    """Floats kept for backward per molecule by the teacher (SPEC.md "Models").

    8 GINE layers, hidden 256: per layer edge messages 2 x E x 256, node MLP 4 x N x 256,
    bond attention E; pooling 768; ECFP branch 4096 + 1024 + 512; head 1280 + 1024 + 512 + 501.
    """
    layer = 2 * edges * 256 + 4 * atoms * 256 + edges
    return 8 * layer + 768 + (4096 + 1024 + 512) + (1280 + 1024 + 512 + 501)


def dataset_bytes(model: str, n: int, *, atoms: float = MEAN_ATOMS, edges: float = MEAN_EDGES,
                  id_bytes: int = ID_BYTES) -> dict[str, float]:
    """Dataset RAM for ``n`` rows: lazy metadata, in-memory (stored dtypes) and float32 expanded.

    The stored bytes per row come from the shard layout the writer creates
    (:func:`neimsctl.io.h5shard.layout.row_bytes` and, per atom and edge, ``entry_bytes``).
    """
    from neimsctl.io.h5shard.layout import entry_bytes, row_bytes

    graph = entry_bytes(model)
    row = (sum(row_bytes(model).values()) + atoms * graph.get("n_atoms", 0)
           + edges * graph.get("n_edges", 0))
    if model == "teacher":
        expanded = atoms * 48 * 4 + edges * (2 * 8 + 6 * 4) + 4096 * 4 + 501 * 4
        keys = 7
    else:
        expanded = 6144 * 4 + 501 * 4
        keys = 3
    meta = n * (id_bytes + 14 + 4 + 8 + (16 if model == "teacher" else 0)) + keys * _chunk_cache()
    strings = n * (id_bytes + 27 + 60)       # id, inchikey, smiles held as fixed-width bytes
    return {"lazy": meta, "in-memory": meta + n * row + strings,
            "in-memory-f32": meta + n * expanded + strings}


def count_params(model: str) -> tuple[int, str]:
    """Parameter count of ``model``: the registered class built on the meta device, else SPEC.md."""
    try:
        import torch

        from neimsctl.models import registry

        cls = registry.get(model)
        with torch.device("meta"):
            net = cls()
        return int(sum(p.numel() for p in net.parameters())), f"{cls.__module__}.{cls.__name__}() on meta device"
    except Exception as exc:  # noqa: BLE001  (any failure: fall back to the documented size)
        return PARAMS[model], f"{PARAM_SOURCE} (model class unavailable: {type(exc).__name__})"


def framework_rss() -> int:
    """RSS of this process now (after the caller imported torch, h5py): the runtime's own cost."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def estimate(*, ram_gb: float, dataset_size: int, models: list[str], batch_sizes: list[int],
             shards: list[Path] | None = None, runtime_bytes: int | None = None) -> dict[str, Any]:
    """Memory needs per setting with a fits / tight / does-not-fit verdict.

    Parameters
    ----------
    ram_gb
        RAM available for training, in GiB.
    dataset_size
        Number of training records.
    models
        ``student`` and/or ``teacher``.
    batch_sizes
        Batch sizes to tabulate.
    shards
        Optional shards to measure mean atoms/edges and id width from.
    runtime_bytes
        Measured RSS of the Python + torch runtime (default: this process now).

    Returns
    -------
    dict
        ``{"settings": [...], "constants": {...}}``; sizes in bytes.
    """
    atoms, edges, id_bytes = MEAN_ATOMS, MEAN_EDGES, ID_BYTES
    measured_from = "constants"
    if shards:
        atoms, edges, id_bytes, graphs = shard_stats(shards, atoms, edges, id_bytes)
        measured_from = (", ".join(str(s) for s in graphs) if graphs
                         else "constants (no teacher shard among --shards)")
    runtime = framework_rss() if runtime_bytes is None else runtime_bytes
    ram = ram_gb * 1024**3
    rows, sources = [], {}
    for model in models:
        params, sources[model] = count_params(model)
        state = params * TRAIN_BYTES_PER_PARAM
        per_sample = (student_activation_floats() if model == "student"
                      else teacher_activation_floats(atoms, edges)) * 4
        data = dataset_bytes(model, dataset_size, atoms=atoms, edges=edges, id_bytes=id_bytes)
        for bs in batch_sizes:
            act = per_sample * bs
            batch_io = PREFETCH * bs * (6144 * 4 + 501 * 4 if model == "student" else
                                        (atoms * 48 + edges * 6 + 4096 + 501) * 4 + edges * 16)
            for mode, dbytes in data.items():
                total = runtime + dbytes + state + act + batch_io
                share = total / ram
                verdict = "fits" if share <= FITS else "tight" if share <= TIGHT else "does-not-fit"
                rows.append({"model": model, "dataset": mode, "batch_size": bs, "runtime": runtime,
                             "data": round(dbytes), "params": params, "model_state": round(state),
                             "activations": round(act), "batches": round(batch_io),
                             "total": round(total),
                             "share_of_ram": share, "verdict": verdict})
    constants = {
        **{f"params_{m}": src for m, src in sources.items()}, "train_bytes_per_param": f"{TRAIN_BYTES_PER_PARAM} (fp32 w+grad+AdamW 2 states)",
        "mean_atoms": atoms, "mean_edges": edges, "id_bytes": id_bytes, "graph_stats_from": measured_from,
        "h5_chunk_cache": f"{_chunk_cache()} B per open dataset (the shard reader's)",
        "prefetch_batches": PREFETCH, "runtime_rss": f"{runtime} B measured (python+torch+h5py)",
        "verdict": f"fits <= {FITS:.0%} of RAM, tight <= {TIGHT:.0%}, else does-not-fit",
        "student_activations": f"{student_activation_floats()} floats/sample (4 experts dense, bottleneck {STUDENT_BOTTLENECK})",
        "in-memory-f32": "features expanded to float32 (6144 x 4 B student) as a naive loader holds them",
    }
    return {"ram_gb": ram_gb, "dataset_size": dataset_size, "settings": rows, "constants": constants}


def shard_stats(shards: list[Path], atoms: float, edges: float,
                id_bytes: int) -> tuple[float, float, int, list[Path]]:
    """Mean atoms/edges per molecule (over the shards that hold graphs, the teacher's) and the
    id width measured from shards; the last item lists the shards the graph figures come from
    (none: ``atoms`` and ``edges`` are returned as given)."""
    import h5py

    n = a = e = 0
    width = 0
    graphs = []
    for path in shards:
        with h5py.File(path, "r") as f:
            rows = int(f.attrs["n_rows"])
            if "atom_ptr" in f:
                n += rows
                a += int(f["atom_ptr"][-1])
                e += int(f["edge_ptr"][-1])
                graphs.append(path)
            width = max(width, max((len(s) for s in f["id"][: min(rows, 4096)]), default=0))
    if n and a:
        atoms, edges = a / n, e / n
    return atoms, edges, (width or id_bytes), graphs


def benchmark(*, shards: list[Path] | None, samples: int, batch_size: int = 32, model: str = "student",
              in_memory: bool = False, workdir: Path | None = None, reads: int = 50,
              seed: int = 42, iter_rows: int | None = None) -> dict[str, Any]:
    """Measure RSS of building a dataset and iterating ``samples`` rows in shuffled batches.

    Returns a dict with ``rss_start``, ``rss_built``, ``rss_peak`` (bytes, RSS sampled after
    every batch), ``dataset_delta``, ``iter_delta``, ``metadata_bytes``, ``rows``,
    ``build_s``, ``iter_s``, ``batch_us`` (random batch read, median of ``reads``).
    ``iter_rows`` caps the rows iterated (the dataset still holds ``samples`` rows).
    """
    import tempfile

    import psutil

    import h5py  # noqa: F401  (import cost belongs to the baseline)
    import torch  # noqa: F401

    from neimsctl.data.dataset import StudentDataset, TeacherDataset
    if model == "teacher":
        import torch_geometric.data  # noqa: F401
    proc = psutil.Process()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if not shards:
            shards = [_bench_shard(Path(tmp), model, samples)]
        import gc

        from neimsctl.io.heap import trim_heap

        gc.collect()
        trim_heap()               # building the shard here must not pre-pay the dataset's RSS
        rss_start = proc.memory_info().rss
        t0 = time.perf_counter()
        cls = StudentDataset if model == "student" else TeacherDataset
        ds = cls(shards, in_memory=in_memory)
        if len(ds) > samples:
            ds = ds.subset(np.arange(samples))
        build_s = time.perf_counter() - t0
        rss_built = peak = proc.memory_info().rss
        order = np.random.default_rng(seed).permutation(len(ds))[:iter_rows]
        t0 = time.perf_counter()
        for i in range(0, len(order), batch_size):
            ds.get_batch(order[i:i + batch_size])
            peak = max(peak, proc.memory_info().rss)
        iter_s = time.perf_counter() - t0
        times = []
        rng = np.random.default_rng(seed + 1)
        for _ in range(reads):
            idx = rng.choice(len(ds), size=min(batch_size, len(ds)), replace=False)
            t = time.perf_counter()
            ds.get_batch(idx)
            times.append(time.perf_counter() - t)
        peak = max(peak, proc.memory_info().rss)
        meta = ds.metadata_nbytes()
    return {"model": model, "mode": "in-memory" if in_memory else "lazy", "rows": len(ds),
            "iterated": len(order),
            "batch_size": batch_size, "rss_start": rss_start, "rss_built": rss_built, "rss_peak": peak,
            "dataset_delta": rss_built - rss_start, "iter_delta": peak - rss_start,
            "metadata_bytes": meta, "build_s": build_s, "iter_s": iter_s,
            "batch_us": float(np.median(times) * 1e6) if times else 0.0}


def _bench_shard(tmp: Path, model: str, rows: int) -> Path:
    """The bundled sample featurized and replicated to ``rows`` rows (its size said first, on
    the ``neimsctl`` log: a million teacher rows are ~30 GB in the temporary directory)."""
    import logging

    from neimsctl.io.h5shard import ShardReader

    base = build_sample_shard(tmp / "base.h5", mode=model)
    with ShardReader(base) as r:
        n0 = max(len(r), 1)
    gb = base.stat().st_size / n0 * rows / 1e9
    free = shutil.disk_usage(tmp).free
    if gb * 1e9 > free:   # --samples 1e9 began an 830 GB file; 1e12, a 7 TiB index array
        from neimsctl.errors import OutputError

        raise OutputError(f"{tmp.parent}: cannot write a {rows:,}-row {model} benchmark shard: it needs "
                          f"~{gb:,.1f} GB, the disk has {free / 1e9:,.1f} GB free; use fewer "
                          "--samples, or measure your own --shards")
    logging.getLogger("neimsctl").warning(
        "membench: writing a %d-row %s benchmark shard (~%.1f GB) in %s", rows, model, gb, tmp)
    return replicate_shard(base, tmp / "bench.h5", rows)


def compare(**kwargs: Any) -> list[dict[str, Any]]:
    """Run :func:`benchmark` lazy and in-memory, each in a fresh Python process."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=kwargs.get("workdir")) as tmp:
        if not kwargs.get("shards"):
            kwargs = {**kwargs, "shards": [_bench_shard(Path(tmp), kwargs.get("model", "student"),
                                                        kwargs["samples"])]}
        return _compare(**kwargs)


def _compare(**kwargs: Any) -> list[dict[str, Any]]:
    out = []
    for in_memory in (False, True):
        args = {**kwargs, "in_memory": in_memory}
        args["shards"] = [str(s) for s in args.get("shards") or []] or None
        if args.get("workdir") is not None:
            args["workdir"] = str(args["workdir"])
        proc = subprocess.run([sys.executable, "-m", "neimsctl.data.membench", json.dumps(args)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if proc.returncode != 0:
            from neimsctl.errors import NeimsError
            raise NeimsError(f"benchmark subprocess failed: {proc.stderr.strip()[-500:]}")
        out.append(json.loads(proc.stdout))
    return out


# -- benchmark shards ---------------------------------------------------------------------------
SAMPLE_MSP = Path(__file__).resolve().parents[1] / "resources" / "sample" / "sample.msp"


def build_sample_shard(dst: Path, *, mode: str = "student", msp: Path = SAMPLE_MSP,
                       limit: int | None = None, inchikey: bool = False) -> Path:
    """Featurize an MSP with inline SMILES into a shard, with the real featurizer and writer.

    Records go through :mod:`neimsctl.io.msp`, :class:`neimsctl.chem.rowbuild.RowBuilder` and
    :class:`neimsctl.io.h5shard.ShardWriter` (what ``msp2jsonl | featurize`` does, minus the
    structure checks), so the shard has the exact layout, chunking and compression of
    ``featurize`` output. Records that do not featurize are skipped. ``inchikey``: compute it
    from the structure (the settings of a plain ``featurize``) instead of taking the record's.
    """
    import orjson

    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.rowbuild import Item, RowBuilder, RowOptions
    from neimsctl.io.h5shard import ShardWriter
    from neimsctl.io.msp import parse_comments, read_msp

    opts = RowOptions(mode=mode, inchikey=inchikey)
    builder = RowBuilder(opts)
    settings, shash = run_settings(opts)
    with open(msp, "rb") as fh, ShardWriter(dst, mode, settings, shash) as sw:
        items = []
        for i, rec in enumerate(read_msp(fh, file=str(msp))):
            if limit is not None and i >= limit:
                break
            f = rec.fields
            obj = {"id": rec.record_id, "name": rec.name, "smiles": f.get("smiles"),
                   "inchikey": f.get("inchikey"), "formula": f.get("formula"),
                   "comments": parse_comments(f.get("comments", "")),
                   "mz": rec.mz, "intensity": rec.intensity}
            items.append(Item(i, str(msp), rec.line, "jsonl", orjson.dumps(obj)))
            if len(items) == 512:
                sw.append(builder.build(items)[0])
                items = []
        sw.append(builder.build(items)[0])
    return dst


def replicate_shard(src: Path, dst: Path, n_rows: int, *, block: int = 8192) -> Path:
    """Write a shard of ``n_rows`` rows by repeating ``src``'s rows (ids get a ``~k`` suffix).

    Datasets, dtypes, chunking, compression and attributes are copied from ``src``; CSR
    offsets are rebased. Used to make 300k-row memory benchmarks from the DEV data.
    """
    import h5py

    with h5py.File(src, "r") as f:
        n0 = int(f.attrs["n_rows"])
        data = {k: f[k][:] for k in f}
        layout = {k: (f[k].dtype, f[k].chunks, f[k].compression, f[k].compression_opts) for k in f}
        attrs = dict(f.attrs)
    csr = {"atom_x": "atom_ptr", "edge_index": "edge_ptr", "edge_attr": "edge_ptr"}
    rows = np.arange(n_rows) % n0
    reps = np.arange(n_rows) // n0
    tmp = dst.with_name(dst.name + ".part")
    try:
        _replicate(tmp, data, layout, attrs, csr, rows, reps, n_rows, block)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return dst


def _replicate(tmp: Path, data: dict[str, np.ndarray], layout: dict[str, Any], attrs: dict[str, Any],
               csr: dict[str, str], rows: np.ndarray, reps: np.ndarray, n_rows: int, block: int) -> None:
    """:func:`replicate_shard`'s writing; a signal is honoured between blocks (a Ctrl-C or SIGTERM
    raised inside one of h5py's callbacks is swallowed there: :mod:`neimsctl.interrupts`)."""
    import h5py

    from neimsctl import interrupts

    with h5py.File(tmp, "w") as g:
        g.attrs.update({**attrs, "n_rows": n_rows})
        for k, v in data.items():
            dtype, chunks, comp, opts = layout[k]
            size = {"atom_ptr": n_rows + 1, "edge_ptr": n_rows + 1}.get(k, n_rows)
            if k in csr:
                ptr = data[csr[k]]
                size = int(np.diff(ptr)[rows].sum())
            g.create_dataset(k, shape=(size,) + v.shape[1:], dtype=dtype, chunks=chunks,
                             compression=comp, compression_opts=opts)
        for k, v in data.items():
            if k in ("atom_ptr", "edge_ptr"):
                g[k][:] = np.concatenate([[0], np.cumsum(np.diff(v)[rows])])
            elif k in csr:
                ptr = data[csr[k]]
                out = 0
                for a in range(0, n_rows, block):
                    interrupts.check()
                    r = rows[a:a + block]
                    parts = np.concatenate([v[ptr[i]:ptr[i + 1]] for i in r])
                    g[k][out:out + len(parts)] = parts
                    out += len(parts)
            else:
                for a in range(0, n_rows, block):
                    interrupts.check()
                    chunk = v[rows[a:a + block]]
                    if k == "id":
                        chunk = np.array([(s.decode() if isinstance(s, bytes) else s) + (f"~{q}" if q else "")
                                          for s, q in zip(chunk, reps[a:a + block])], dtype=object)
                    g[k][a:a + len(chunk)] = chunk


if __name__ == "__main__":          # child of compare(): one clean-process benchmark as JSON
    spec = json.loads(sys.argv[1])
    if spec.get("shards"):
        spec["shards"] = [Path(s) for s in spec["shards"]]
    if spec.get("workdir"):
        spec["workdir"] = Path(spec["workdir"])
    print(json.dumps(benchmark(**spec)))
