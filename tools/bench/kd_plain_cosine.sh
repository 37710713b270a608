#!/usr/bin/env bash
# Issue 5, session 5: KD from the teacher ensemble with a plain-cosine loss term, three seeds,
# against the student without KD trained with the same loss, three seeds; then every model once
# on the test split.
#
#   tools/bench/kd_plain_cosine.sh RUN_DIR
#
# RUN_DIR: what tools/bench/kd_ensemble.sh made (student.h5, soft_ens.h5, ts42/, nokd*/, v1/,
# kd_ens_fixed/). The loss: T = 1, no L_feature, fixed alpha = beta = 0.5 (session 4's
# kd_ens_fixed) plus loss.plain_cosine = 1, a (1 - cos) term on plain linear spectra, the space
# of the reported mean cosine. Each step is skipped when its output exists. ~45 min on 2 cores.
set -euo pipefail
run="${1:?run directory of tools/bench/kd_ensemble.sh}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$run"
. "$here/tools/bench/kd_recipes.sh"
train kd_pc_a5 42 -s soft_ens.h5 "${kd[@]}" & train nokd_pc 42 --no-kd & wait
train kd_pc_a5_s1 1 -s soft_ens.h5 "${kd[@]}" & train kd_pc_a5_s2 2 -s soft_ens.h5 "${kd[@]}" & wait
train nokd_pc_s1 1 --no-kd & train nokd_pc_s2 2 --no-kd & wait
python "$here/tools/bench/compare_models.py" student.h5 --out cmp6 --soft teacher-ensemble=soft_ens.h5 \
    student-kd-pc=kd_pc_a5/checkpoints/best.pt student-kd-pc-s1=kd_pc_a5_s1/checkpoints/best.pt \
    student-kd-pc-s2=kd_pc_a5_s2/checkpoints/best.pt student-nokd-pc=nokd_pc/checkpoints/best.pt \
    student-nokd-pc-s1=nokd_pc_s1/checkpoints/best.pt student-nokd-pc-s2=nokd_pc_s2/checkpoints/best.pt \
    student-kd-ens-fixed=kd_ens_fixed/checkpoints/best.pt student-nokd=nokd/checkpoints/best.pt \
    student-nokd-s1=nokd_s1/checkpoints/best.pt student-nokd-s2=nokd_s2/checkpoints/best.pt \
    neims-v1=v1/checkpoints/best.pt
