#!/usr/bin/env python3
"""How often the cut above the molecular ion (``neimsctl.chem.isotopes``) would cut a spectrum.

    python tools/bench/isotope_cut.py RECORDS.jsonl [...]

Reads JSONL records or predictions (``neimsctl msp2jsonl`` output, ``neimsctl predict -O
jsonl`` output of a build before the cut) with a structure (``smiles``) and a nominal mass
(``mw``), bins them as ``eval`` does (m/z 0..500, base peak 1), applies
:func:`~neimsctl.chem.isotopes.above_molecule_capped` with the formula of the structure, and
prints the share of spectra it changes and of those where a peak loses more than 5 % of the base
peak. On measured spectra this is the rule's false alarms (contaminants, misassigned peaks and
chemistry the rule does not know); on predictions, what it removes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson
from rdkit import Chem, RDLogger
from rdkit.Chem.rdMolDescriptors import CalcMolFormula

from neimsctl.chem.isotopes import above_molecule_capped
from neimsctl.io.spectrum import bin_spectrum, normalize_max


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args()
    RDLogger.DisableLog("rdApp.*")
    spectra, formulas, masses, skipped = [], [], [], 0
    for path in args.files:
        for line in path.read_bytes().splitlines():
            rec = orjson.loads(line) if line.strip() else {}
            mol = Chem.MolFromSmiles(rec.get("smiles") or "") if "mz" in rec else None
            if mol is None or mol.GetNumAtoms() == 0 or not isinstance(rec.get("mw"), int):
                skipped += bool(rec)
                continue
            s = bin_spectrum(rec["mz"], rec["intensity"])
            if s.max() <= 0:
                skipped += 1
                continue
            spectra.append(normalize_max(s))
            formulas.append(CalcMolFormula(mol, True, True))
            masses.append(rec["mw"])
    if not spectra:
        sys.exit("isotope_cut.py: no record with a structure, a mass and peaks")
    s = np.stack(spectra)
    out, _ = above_molecule_capped(s.copy(), None, formulas, masses)
    changed = (out != s).any(axis=1)
    big = (s - out).max(axis=1) > 0.05
    print(f"{len(s):,} spectra ({skipped:,} lines without a structure, mass or peaks skipped): "
          f"changed {changed.sum():,} ({changed.mean():.2%}), a peak cut by more than 5 % of "
          f"the base peak {big.sum():,} ({big.mean():.2%})")


if __name__ == "__main__":
    main()
