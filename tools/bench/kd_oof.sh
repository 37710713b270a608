#!/usr/bin/env bash
# Issue 18: a teacher stronger than its student, and KD that transfers it, with out-of-fold soft
# labels (K-fold cross-fitting). On the compound-grouped 8:1:1 split (seed 42):
#
#   1. K folds of the training compounds (data.fold=k/K: a keyed hash of the compound); for each
#      fold k a GNN teacher (configs/finetune/teacher-cpu-small.yaml) and a compact student
#      without KD (configs/distill/student-compact.yaml --no-kd), both trained without fold k;
#   2. neimsctl softlabel with all 2K members: every training compound is labelled only by the
#      two members that never saw it, val/test compounds by all (the teacher ensemble);
#   3. compact students with KD from those labels and without KD, seeds S (same seed = same
#      initialisation and batch order: pairs), as a tracked sweep (tools/sweep.py: resumable,
#      results table + plot, the ensemble of each arm's seeds judged too);
#   4. val: the teacher (soft-label means) against the students (softlabel_quality.py), then the
#      test split once (compare_models.py, kd_paired.py for the paired interval).
#
#   tools/bench/kd_oof.sh RUN_DIR        (RUN_DIR holds student.h5 and teacher.h5 of one library,
#                                         e.g. the SPLIT=test run of tools/train_default_model.sh)
#   K=3 SEEDS="42 1 2" TEST=1 tools/bench/kd_oof.sh RUN_DIR
#
# Every step is skipped when its output exists; an interrupted training resumes. Two trainings at
# a time, one thread each. About 90 minutes on 2 cores for K=3 and three seeds.
set -euo pipefail
run="${1:?run directory with student.h5 and teacher.h5}"
K="${K:-3}"
SEEDS="${SEEDS:-42 1 2}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
ft="$here/configs/finetune/teacher-cpu-small.yaml"
cs="$here/configs/distill/student-compact.yaml"
out="$run/oof$K"
mkdir -p "$out"
cd "$run"
# --resume for a run directory that holds a run (a checkpoint, or the log of a run killed before
# its first one): without it the training commands refuse such a directory
resume() { [ "$(python3 "$here/tools/run_state.py" "$1")" = partial ] && echo --resume || true; }
done_() { [ "$(python3 "$here/tools/run_state.py" "$1")" = done ]; }   # every epoch of its config
step() { printf '\n== kd_oof.sh [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
teacher() {  # fold
    local d="$out/t$1"; done_ "$d" && return 0
    neimsctl finetune teacher.h5 -c "$ft" --set data.fold="$1/$K" --set train.threads=1 \
        -o "$d" $(resume "$d") > "$d.log" 2>&1
}
student() {  # fold
    local d="$out/s$1"; done_ "$d" && return 0
    neimsctl distill student.h5 --no-kd -c "$cs" --set data.fold="$1/$K" --set train.threads=1 \
        --set train.num_workers=0 -o "$d" $(resume "$d") > "$d.log" 2>&1
}
step "1. fold members: GNN teacher and compact student per fold, K=$K (logs in $out/*.log)"
for k in $(seq 1 "$K"); do
    teacher "$k" & a=$!; student "$k" & b=$!; wait "$a"; wait "$b"
done
members=()
for k in $(seq 1 "$K"); do members+=(-t "$out/t$k/checkpoints/best.pt" -t "$out/s$k/checkpoints/best.pt"); done
if [ ! -e "$out/soft_oof.h5" ]; then
    step "2. softlabel, out of fold: ${#members[@]} arguments"
    r=(); [ -e "$out/soft_oof.h5.partial" ] && r=(--resume)
    neimsctl softlabel teacher.h5 "${members[@]}" --samples 10 --batch-size 128 --part all \
        -o "$out/soft_oof.h5" "${r[@]}"
fi
step "3. compact students with and without KD, seeds $SEEDS: a tracked sweep (tools/sweep.py)"
cat > "$out/sweep.yaml" <<YAML
command: distill
shards: [student.h5]
config: $cs
set: {train.threads: 1, train.num_workers: 0}
grid:
  args: [[--no-kd], [--soft-labels, $out/soft_oof.h5]]
seeds: [$(echo $SEEDS | sed 's/ /, /g')]
ensembles: [$(echo $SEEDS | wc -w)]
parallel: 2
YAML
python "$here/tools/sweep.py" run "$out/sweep.yaml" "$out/sweep" | tee "$out/val_sweep.md"
step "4. val: the teacher ensemble's soft labels against the students"
python "$here/tools/bench/softlabel_quality.py" teacher.h5 "$out/soft_oof.h5" | tee "$out/val_teacher.txt"
[ "${TEST:-0}" = 1 ] || { step "val only (TEST=1 runs the test split once)"; exit 0; }
step "5. test split, once"
mapfile -t models < <(python - "$out/sweep" <<'PY'
import csv, sys
for r in csv.DictReader(open(f"{sys.argv[1]}/results.csv")):
    arm = "nokd" if "--no-kd" in r["recipe"] else "kd-oof"
    print(f"{arm}-s{r['seed']}={sys.argv[1]}/trials/{r['id']}/checkpoints/best.pt")
PY
)
python "$here/tools/bench/compare_models.py" student.h5 --out "$out/cmp" --no-speed \
    --soft teacher-oof="$out/soft_oof.h5" "${models[@]}" | tee "$out/test_table.md"
a=(); b=(); for s in $SEEDS; do a+=("kd-oof-s$s"); b+=("nokd-s$s"); done
python "$here/tools/bench/kd_paired.py" "$out/cmp" --a "${a[@]}" --b "${b[@]}" | tee "$out/test_paired.md"
python "$here/tools/bench/kd_paired.py" "$out/cmp" --a teacher-oof --b "${b[@]}" | tee "$out/test_teacher_paired.md"
