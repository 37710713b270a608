#!/usr/bin/env python3
"""Regenerate the bundled sample (neimsctl/resources/sample/) from ../shared/data.

Keeps only records whose Comments say license=CC BY or CC BY-SA (never CC BY-NC-SA), at most 300,
chosen by sha256 of the MassBank accession (stable), kept in file order. Also writes a NIST-style
variant (no SMILES line, one MOL file per ID made with RDKit) of the first 30 sample records, with
deliberate defects for tests: one MOL file missing, one without `M  END`, one with it doubled.

    python tools/make_sample.py [../shared/data/massbank_ei.msp]
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from rdkit import Chem

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "neimsctl" / "resources" / "sample"
SRC = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "massbank_ei.msp"
N_SAMPLE, N_NIST = 300, 30


def field(rec: str, key: str) -> str:
    m = re.search(rf"^{key}: (.*)$", rec, re.M)
    return m.group(1) if m else ""


def main() -> None:
    recs = SRC.read_text().strip().split("\n\n")
    keep = [r for r in recs if re.search(r"license=CC BY(-SA)?;", r)]
    acc = lambda r: re.search(r"accession=([^;]+);", r).group(1)  # noqa: E731
    chosen = set(sorted(keep, key=lambda r: hashlib.sha256(acc(r).encode()).hexdigest())[:N_SAMPLE])
    sample = [r for r in keep if r in chosen]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sample.msp").write_text("\n\n".join(sample) + "\n")

    rows = ["| ID | MassBank accession | license | authors |", "|---|---|---|---|"]
    for r in sample:
        c = field(r, "Comments")
        lic = re.search(r"license=([^;]+);", c).group(1)
        authors = re.search(r'authors=(.*)"$', c).group(1)
        rows.append(f"| {field(r, 'ID')} | {acc(r)} | {lic} | {authors} |")
    (OUT / "ATTRIBUTION.md").write_text(
        "# Attribution of the bundled sample\n\n"
        f"`sample.msp` holds {len(sample)} electron-ionization spectra from MassBank (MassBank consortium\n"
        "and its contributors; MassBank-data release 2025.05.1, https://github.com/MassBank/MassBank-data),\n"
        "converted to NIST-style MSP by the neimsctl project (peaks rounded to integer m/z, base peak 999,\n"
        "structure from the record's SMILES via RDKit). Only records licensed **CC BY** or **CC BY-SA** are\n"
        "included; each keeps its own license and authors (also in its `Comments` line). CC BY-SA records\n"
        "are shared alike under CC BY-SA 4.0. `nist_style/` is derived from the first records of\n"
        "`sample.msp` (SMILES moved into MOL files written by RDKit) under the same terms.\n\n"
        + "\n".join(rows) + "\n")

    nist = OUT / "nist_style"
    (nist / "mol_files").mkdir(parents=True, exist_ok=True)
    for old in (nist / "mol_files").glob("*.MOL"):
        old.unlink()
    blocks = []
    for i, r in enumerate(sample[:N_NIST]):
        rid = field(r, "ID")
        mol = Chem.MolFromSmiles(field(r, "SMILES"))
        block = field(r, "Name") + Chem.MolToMolBlock(mol)[Chem.MolToMolBlock(mol).index("\n"):]
        if i == 3:
            continue  # deliberately missing MOL file
        if i == 5:
            block = block.replace("M  END\n", "")  # lib2nist defect: no M  END
        if i == 7:
            block = block.replace("M  END\n", "M  END\nM  END\n")  # lib2nist defect: doubled
        (nist / "mol_files" / f"ID{rid}.MOL").write_text(block)
        blocks.append(rid)
    text = "\n\n".join(re.sub(r"^SMILES: .*\n", "", r, flags=re.M) for r in sample[:N_NIST]) + "\n"
    (nist / "sample_nostruct.msp").write_text(text)
    missing = field(sample[3], "ID")
    (nist / "README.md").write_text(
        f"NIST17-like layout of the first {N_NIST} records of ../sample.msp: no SMILES line; structures in\n"
        f"mol_files/ID<id>.MOL. Deliberate defects: ID{missing} has no MOL file; "
        f"ID{field(sample[5], 'ID')}.MOL lacks `M  END`; ID{field(sample[7], 'ID')}.MOL has it twice.\n")
    print(f"sample: {len(sample)} records; nist_style: {len(blocks)} MOL files, missing ID{missing}")


if __name__ == "__main__":
    main()
