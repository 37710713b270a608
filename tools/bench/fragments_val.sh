#!/usr/bin/env bash
# Do the fragment masses help? The compact student without KD on the DEV split (8:1:1, seed 42),
# three ways, three seeds each, two trainings at a time (one thread each; ~30 minutes on 2 cores):
#   base      the shipped recipe's input (ECFP4 + atom-pair counts)
#   fragin    + the fragment masses as input          (--set model.fragments=true)
#   fragconv  + their path into the mass-aware head   (... --set model.fragment_channels=4)
# then prints each arm's validation figures at its best epoch (chosen by val Recall@10, as
# distill does) and the per-seed differences to base. Resumable: finished runs are kept.
#
#   tools/bench/fragments_val.sh [LIBRARY.msp] [RUN_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
lib="${1:-$here/../shared/data/massbank_ei.msp}"
out="${2:-fragments-val}"
mkdir -p "$out/runs"
if [ ! -e "$out/student.h5" ]; then   # msp2jsonl exits 1 when it rejects records (reported)
    neimsctl msp2jsonl "$lib" -q -o "$out/records.jsonl" || [ $? -eq 1 ]
    neimsctl featurize --mode student -q "$out/records.jsonl" -o "$out/student.h5"
fi
run() {  # name seed [--set ...]
    local name=$1 seed=$2 dir
    shift 2
    dir="$out/runs/$name-s$seed"
    [ -e "$dir/done" ] && return 0
    rm -rf "$dir"
    neimsctl distill "$out/student.h5" --no-kd -c "$here/configs/distill/student-compact.yaml" \
        --set train.threads=1 --set train.seed="$seed" "$@" -o "$dir" > "$dir.log" 2>&1 && touch "$dir/done"
}
export -f run
export out here
frag="--set model.fragments=true"
for seed in 42 1 2; do
    printf '%s\n' "base $seed" "fragin $seed $frag" "fragconv $seed $frag --set model.fragment_channels=4"
done | xargs -P 2 -I{} bash -c 'run {}'
python3 - "$out/runs" <<'EOF'
import json, statistics, sys
from pathlib import Path

keys = [("val_recall_at_1", "R@1"), ("val_recall_at_5", "R@5"), ("val_recall_at_10", "R@10"),
        ("val_mean_cosine", "cosine"), ("val_recall_at_1_mass5", "R@1 +-5 Da"),
        ("val_recall_at_10_mass5", "R@10 +-5 Da")]
seeds = ("42", "1", "2")
best = {}
for d in sorted(Path(sys.argv[1]).iterdir()):
    if not (d / "done").exists():
        continue
    vals = [json.loads(line).get("val") for line in open(d / "train_log.jsonl")]
    vals = [v for v in vals if isinstance(v, dict) and "val_recall_at_10" in v]
    arm, seed = d.name.rsplit("-s", 1)
    best.setdefault(arm, {})[seed] = max(vals, key=lambda v: v["val_recall_at_10"])
print("| arm | " + " | ".join(k for _, k in keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for arm in ("base", "fragin", "fragconv"):
    row = [f"{statistics.mean(best[arm][s][k] for s in seeds):.3f} "
           f"({' / '.join(f'{best[arm][s][k]:.3f}' for s in seeds)})" for k, _ in keys]
    print(f"| {arm} | " + " | ".join(row) + " |")
for arm in ("fragin", "fragconv"):
    diff = {lab: [round(100 * (best[arm][s][k] - best["base"][s][k]), 1) for s in seeds] for k, lab in keys}
    print(f"{arm} - base, points per seed (42, 1, 2): {diff}")
EOF
