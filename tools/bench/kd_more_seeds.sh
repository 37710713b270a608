#!/usr/bin/env bash
# Issue 5, session 6: three more seeds (3, 4, 5) of the KD + plain-cosine student and of the
# student without KD trained with the same loss (tools/bench/kd_plain_cosine.sh has seeds 42, 1,
# 2), then the new models once on the test split and the six seed pairs compared query by query
# (tools/bench/kd_paired.py: paired differences, compound bootstrap).
#
#   tools/bench/kd_more_seeds.sh RUN_DIR
#
# RUN_DIR: what kd_ensemble.sh and kd_plain_cosine.sh made (student.h5, soft_ens.h5, cmp6/).
# Each step is skipped when its output exists. ~40 min on 2 cores.
set -euo pipefail
run="${1:?run directory of tools/bench/kd_ensemble.sh}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$run"
. "$here/tools/bench/kd_recipes.sh"
for s in 3 4 5; do  # the pair of one seed side by side
    train "kd_pc_a5_s$s" "$s" -s soft_ens.h5 "${kd[@]}" & train "nokd_pc_s$s" "$s" --no-kd & wait
done
[ -e cmp8/results.json ] || python "$here/tools/bench/compare_models.py" student.h5 --out cmp8 \
    student-kd-pc-s3=kd_pc_a5_s3/checkpoints/best.pt student-kd-pc-s4=kd_pc_a5_s4/checkpoints/best.pt \
    student-kd-pc-s5=kd_pc_a5_s5/checkpoints/best.pt student-nokd-pc-s3=nokd_pc_s3/checkpoints/best.pt \
    student-nokd-pc-s4=nokd_pc_s4/checkpoints/best.pt student-nokd-pc-s5=nokd_pc_s5/checkpoints/best.pt
for m in student-kd-pc student-kd-pc-s1 student-kd-pc-s2 student-nokd-pc student-nokd-pc-s1 student-nokd-pc-s2 neims-v1; do
    ln -sf "../cmp6/$m.pred.jsonl" "cmp8/$m.pred.jsonl"  # same split, same queries
done
python "$here/tools/bench/kd_paired.py" cmp8 \
    --a student-kd-pc student-kd-pc-s1 student-kd-pc-s2 student-kd-pc-s3 student-kd-pc-s4 student-kd-pc-s5 \
    --b student-nokd-pc student-nokd-pc-s1 student-nokd-pc-s2 student-nokd-pc-s3 student-nokd-pc-s4 student-nokd-pc-s5 \
    | tee cmp8/paired.md
python "$here/tools/bench/kd_paired.py" cmp8 \
    --a student-kd-pc student-kd-pc-s1 student-kd-pc-s2 student-kd-pc-s3 student-kd-pc-s4 student-kd-pc-s5 \
    --b neims-v1 neims-v1 neims-v1 neims-v1 neims-v1 neims-v1 | tee cmp8/paired_v1.md
