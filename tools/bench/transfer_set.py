"""Build a KD transfer set: unlabeled molecules near a library's training compounds.

Issue 5: a teacher ensemble's soft labels help the student only where the student has no
measured spectrum, so distillation needs molecules *without* spectra that resemble the
library. Two steps, each printing SMILES lines ``SMILES id`` on stdout::

    # 1. candidates: a SMILES pool plus the BRICS fragments (open bonds capped with H) of it and
    #    of the library's training compounds (smaller molecules, closer to an EI library's range)
    python tools/bench/transfer_set.py fragments POOL.smi --library student.h5 > cand.smi
    neimsctl featurize --mode student cand.smi -o cand.h5
    # 2. the N candidates most Tanimoto-similar (ECFP4) to the library's *training* compounds,
    #    excluding every compound of the library (any part of the split) by InChIKey block
    python tools/bench/transfer_set.py select student.h5 cand.h5 --n 20000 > transfer.smi

Only the train part of the compound-grouped split (seed 42) guides the choice; val and test
compounds are never looked at except to be excluded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from neimsctl.io.inchikey import connectivity_blocks


def _train_rows(library: Path, seed: int, fractions: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(shard rows of the library's train part, every library InChIKey block)."""
    from neimsctl.data.dataset import StudentDataset
    from neimsctl.evaluate.validation import dataset_split

    ds = StudentDataset([library])
    parts = dataset_split(ds, seed=seed, fractions=fractions)
    return ds.rows[parts.train], np.unique(ds.blocks)


def _train_part(library: Path, seed: int, fractions: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(packed ECFP rows of the library's train compounds, every library InChIKey block)."""
    import h5py

    rows, blocks = _train_rows(library, seed, fractions)
    with h5py.File(library, "r") as f:
        ecfp = f["ecfp"][:]
        keys = connectivity_blocks(f["inchikey"][:], as_bytes=True)
    _, first = np.unique(keys[rows], return_index=True)
    return ecfp[rows[np.sort(first)]], blocks


def fragments(args: argparse.Namespace) -> None:
    """The pool's SMILES, then the H-capped BRICS fragments of the pool and the library's train part."""
    import h5py
    from rdkit import Chem, RDLogger
    from rdkit.Chem import BRICS

    RDLogger.DisableLog("rdApp.*")
    sources: list[tuple[str, str]] = []
    for path in args.pool:
        with open(path) as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    sources.append((line.split()[0], f"{Path(path).stem}:{i}"))
    lib: list[str] = []
    if args.library:
        rows, _ = _train_rows(args.library, args.split_seed, tuple(args.split))
        with h5py.File(args.library, "r") as f:
            smiles = f["smiles"][:]
        lib = sorted({s.decode() for s in smiles[rows]})
    seen: set[str] = set()
    out = sys.stdout
    for smi, name in sources:
        if smi not in seen:
            seen.add(smi)
            out.write(f"{smi} {name}\n")
    dummy = Chem.MolFromSmarts("[#0]")
    n_frag = 0
    parents = [s for s, _ in sources[:args.fragment_pool]] + lib
    for k, smi in enumerate(parents):
        mol = Chem.MolFromSmiles(smi)
        if mol is None or mol.GetNumHeavyAtoms() > 60:
            continue
        # BRICSDecompose returns a set: sorted, so the output does not depend on PYTHONHASHSEED
        for frag in sorted(BRICS.BRICSDecompose(mol, minFragmentSize=args.min_atoms)):
            m = Chem.MolFromSmiles(frag)
            if m is None:
                continue
            capped = Chem.ReplaceSubstructs(m, dummy, Chem.MolFromSmiles("[H]"), replaceAll=True)[0]
            try:
                capped = Chem.RemoveHs(capped)
                text = Chem.MolToSmiles(capped)
            except Exception:   # noqa: BLE001 - a fragment RDKit cannot sanitize is skipped
                continue
            if text not in seen and capped.GetNumHeavyAtoms() >= args.min_atoms:
                seen.add(text)
                n_frag += 1
                out.write(f"{text} brics:{n_frag}\n")
    print(f"transfer_set fragments: {len(sources)} pool lines, {len(lib)} library train "
          f"compounds, {n_frag} new fragments", file=sys.stderr)


def select(args: argparse.Namespace) -> None:
    """The ``--n`` candidates nearest (max Tanimoto) to the library's training compounds."""
    import h5py
    import torch

    train, lib_blocks = _train_part(args.library, args.split_seed, tuple(args.split))
    with h5py.File(args.candidates, "r") as f:
        cand = f["ecfp"][:]
        keys = connectivity_blocks(f["inchikey"][:], as_bytes=True)
        smiles = f["smiles"][:]
        ids = f["id"][:]
    keep = ~np.isin(keys, lib_blocks)
    _, first = np.unique(keys, return_index=True)
    uniq = np.zeros(len(keys), bool)
    uniq[first] = True
    keep &= uniq
    cidx = np.flatnonzero(keep)
    t = torch.from_numpy(np.unpackbits(train, axis=1).astype(np.float32))
    t_n = t.sum(1)
    best = np.zeros(len(cidx), np.float32)
    for i in range(0, len(cidx), 4096):
        c = torch.from_numpy(np.unpackbits(cand[cidx[i:i + 4096]], axis=1).astype(np.float32))
        inter = c @ t.T
        union = c.sum(1, keepdim=True) + t_n[None, :] - inter
        best[i:i + 4096] = (inter / union.clamp_min(1)).amax(1).numpy()
    order = np.argsort(-best, kind="stable")[:args.n]
    for j in order:
        sys.stdout.write(f"{smiles[cidx[j]].decode()} {ids[cidx[j]].decode()}\n")
    sel = best[order]
    print(f"transfer_set select: {len(cand)} candidates, {len(cidx)} not in the library; chose "
          f"{len(order)} with max Tanimoto to the {len(train)} training compounds "
          f"min {sel.min():.3f} / median {np.median(sel):.3f} / max {sel.max():.3f} "
          f"(all candidates: median {np.median(best):.3f})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    fr = sub.add_parser("fragments", help="pool SMILES + their BRICS fragments")
    fr.add_argument("pool", nargs="+", type=Path, help="SMILES files (SMILES first on each line)")
    fr.add_argument("--library", type=Path, help="student shard: fragment its training compounds too")
    fr.add_argument("--fragment-pool", type=int, default=20000,
                    help="fragment only the first N pool molecules")
    fr.add_argument("--min-atoms", type=int, default=4, help="smallest fragment (heavy atoms)")
    sel = sub.add_parser("select", help="the N candidates nearest to the training compounds")
    sel.add_argument("library", type=Path, help="student shard of the library (with spectra)")
    sel.add_argument("candidates", type=Path, help="student shard of the candidates")
    sel.add_argument("--n", type=int, default=20000)
    for p in (fr, sel):
        p.add_argument("--split-seed", type=int, default=42)
        p.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1])
    args = ap.parse_args(argv)
    {"fragments": fragments, "select": select}[args.cmd](args)


if __name__ == "__main__":
    main()
