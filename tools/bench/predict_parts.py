#!/usr/bin/env python3
"""Where ``predict``'s time per molecule goes, part by part, next to the bare RDKit work (issue 20).

    python tools/bench/predict_parts.py [SMILES_FILE] [--n 10240] [--reps 3]

Runs in this process what one ``predict --jobs N`` worker and the main process do to chunks of
1,024 SMILES lines (the shipped student, 1 torch thread, MSP with InChIKey) and prints, as a
Markdown table, the CPU time per molecule (``time.process_time``; the minimum over ``--reps``
rounds, the parts alternating within each round, so load hits them alike):

- the bare work of the issue (``MolFromSmiles``, Morgan 4096 bits, Morgan counts 2048,
  ``MolToInchiKey``), each part alone and the whole loop;
- what predict's output and model need beyond it: atom-pair counts (the model's second
  fingerprint) instead of Morgan counts, canonical SMILES, formula and nominal mass;
- predict's own stages: the featurizer (``Featurizer`` of ``neimsctl.predict.run``: parsing,
  RDKit, the block) and its overhead over the RDKit calls it makes, the domain checks, the
  model call (``ChunkPredictor.spectra``), MSP formatting (``PredictionWriter.format``), the
  whole worker stage (``ChunkPredictor.__call__``), the pickling of item chunks and results
  between the processes, and the main process's reading and writing;
- start-up (one-off seconds): importing the prediction code (torch) and loading the model, and
  a worker's first chunk beyond a later one.

Only APIs that exist since issue 16 are used, so the script measures older trees alike
(``PYTHONPATH=OLD_TREE python tools/bench/predict_parts.py``).
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import time
from pathlib import Path

MOSES = Path(__file__).resolve().parents[3] / "shared" / "data" / "pretrain" / "moses_train_100k.smi"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("smiles", type=Path, nargs="?", default=MOSES)
    ap.add_argument("--n", type=int, default=10240)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    t0 = time.process_time()
    import numpy as np
    import torch
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator, rdMolDescriptors

    from neimsctl.chem.domain import domain_flags
    from neimsctl.chem.structure import formula_nominal_mass
    from neimsctl.io.inputs import iter_items
    from neimsctl.io.parallel import chunked
    from neimsctl.predict.model import load_model
    from neimsctl.predict.run import CHUNK, ChunkPredictor, Featurizer, PredictOptions
    t_import = time.process_time() - t0
    import neimsctl

    RDLogger.DisableLog("rdApp.*")
    torch.set_num_threads(1)
    t0 = time.process_time()
    lm = load_model("student")
    stage = ChunkPredictor(lm, PredictOptions())
    t_load = time.process_time() - t0

    chunks = []
    for c in chunked(iter_items([args.smiles]), CHUNK):
        chunks.append(c)
        if sum(map(len, chunks)) >= args.n:
            break
    n = sum(map(len, chunks))
    smiles = [it.raw.split()[0].decode() for c in chunks for it in c]
    t0 = time.process_time()
    stage(chunks[0])
    t_first = time.process_time() - t0
    t0 = time.process_time()
    stage(chunks[1])
    t_first -= time.process_time() - t0

    bits = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096)
    mcounts = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    pairs = rdFingerprintGenerator.GetAtomPairGenerator(fpSize=2048)
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    formulas = [rdMolDescriptors.CalcMolFormula(m, True, True) for m in mols]

    def bare() -> None:
        for s in smiles:
            m = Chem.MolFromSmiles(s)
            bits.GetFingerprintAsNumPy(m)
            mcounts.GetCountFingerprintAsNumPy(m)
            Chem.MolToInchiKey(m)

    def needed() -> None:   # the RDKit calls the featurizer makes (student mode, SMILES lines)
        for s in smiles:
            m = Chem.MolFromSmiles(s)
            np.packbits(bits.GetFingerprintAsNumPy(m))
            np.minimum(pairs.GetCountFingerprintAsNumPy(m), 255).astype(np.uint8)
            formula_nominal_mass(rdMolDescriptors.CalcMolFormula(m, True, True))
            Chem.MolToSmiles(m)
            Chem.MolToInchiKey(m)

    blocks = [Featurizer("student")(c)[0] for c in chunks]
    spectra = [stage.spectra(b)[0] for b in blocks]
    flags = [[domain_flags(str(s), str(f), int(m)) for s, f, m in
              zip(b["smiles"], b["formula"], b["mw"])] for b in blocks]
    results = [stage(c) for c in chunks]
    sent = [pickle.dumps((c,), pickle.HIGHEST_PROTOCOL) for c in chunks]
    back = [pickle.dumps(r, pickle.HIGHEST_PROTOCOL) for r in results]

    def featurize() -> None:
        f = Featurizer("student")            # a fresh structure cache: no molecule seen before
        for c in chunks:
            f(c)

    def worker() -> None:
        stage.featurizer = Featurizer("student")   # a fresh structure cache, as in featurize()
        for c in chunks:
            stage(c)

    def main_process() -> None:
        out = io.BytesIO()
        for c in chunked(iter_items([args.smiles]), CHUNK):
            if c[0].ordinal >= n:
                break
        for r in back:
            out.write(pickle.loads(r).data)

    parts = {
        "bare: MolFromSmiles": lambda: [Chem.MolFromSmiles(s) for s in smiles],
        "bare: Morgan 4096 bits (GetFingerprintAsNumPy)": lambda: [bits.GetFingerprintAsNumPy(m) for m in mols],
        "bare: Morgan counts 2048": lambda: [mcounts.GetCountFingerprintAsNumPy(m) for m in mols],
        "bare: MolToInchiKey": lambda: [Chem.MolToInchiKey(m) for m in mols],
        "bare: the whole loop": bare,
        "needed: atom-pair counts 2048 (the model's 2nd fingerprint)": lambda: [
            np.minimum(pairs.GetCountFingerprintAsNumPy(m), 255).astype(np.uint8) for m in mols],
        "needed: canonical SMILES (MolToSmiles)": lambda: [Chem.MolToSmiles(m) for m in mols],
        "needed: formula + nominal mass": lambda: [formula_nominal_mass(
            rdMolDescriptors.CalcMolFormula(m, True, True)) for m in mols],
        "needed: the RDKit loop predict makes": needed,
        "predict: featurizer (parse, RDKit, block)": featurize,
        "predict: domain checks": lambda: [domain_flags(str(s), str(f), int(m)) for b in blocks
                                           for s, f, m in zip(b["smiles"], b["formula"], b["mw"])],
        "predict: model call (student, 1 thread)": lambda: [stage.spectra(b) for b in blocks],
        "predict: MSP formatting": lambda: [stage.writer.format(b, s, None, None, f)
                                            for b, s, f in zip(blocks, spectra, flags)],
        "predict: worker stage, all of it (ChunkPredictor)": worker,
        "transfer: pickle items (main) + unpickle (worker)": lambda: [
            pickle.loads(pickle.dumps((c,), pickle.HIGHEST_PROTOCOL)) for c in chunks],
        "transfer: pickle results (worker) + unpickle (main)": lambda: [
            pickle.loads(pickle.dumps(r, pickle.HIGHEST_PROTOCOL)) for r in results],
        "main process: read input + write output": main_process,
    }
    best = {k: float("inf") for k in parts}
    for rep in range(args.reps):
        for name in (list(parts) if rep % 2 == 0 else list(parts)[::-1]):
            t0 = time.process_time()
            parts[name]()
            best[name] = min(best[name], time.process_time() - t0)
        print(f"round {rep + 1} of {args.reps} done", file=sys.stderr, flush=True)
    ms = {k: 1e3 * v / n for k, v in best.items()}
    ms["predict: featurizer overhead over its RDKit calls"] = \
        ms["predict: featurizer (parse, RDKit, block)"] - ms["needed: the RDKit loop predict makes"]

    print(f"neimsctl {neimsctl.__version__} from {Path(neimsctl.__file__).parent}; {n:,} molecules; "
          f"min of {args.reps} rounds; bytes per molecule: items {sum(map(len, sent)) / n:.0f}, "
          f"results {sum(map(len, back)) / n:.0f}")
    print()
    print("| part | ms/mol |")
    print("|---|---|")
    for k, v in ms.items():
        print(f"| {k} | {v:.4f} |")
    print(f"| start-up: import the prediction code (torch) | {t_import:.2f} s once |")
    print(f"| start-up: load the model | {t_load:.2f} s once |")
    print(f"| start-up: a worker's first chunk beyond a later one | {t_first:.2f} s per worker |")


if __name__ == "__main__":
    main()
