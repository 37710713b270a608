#!/usr/bin/env bash
# Issue 5, session 5: distillation from the teacher ensemble with a transfer set — molecules
# without spectra, near the library's training compounds, labelled by the ensemble — so the
# student learns the ensemble where it has no measured spectrum (on the training compounds
# the ensemble's labels nearly equal the measured spectra).
#
#   tools/bench/kd_transfer.sh RUN_DIR
#
# RUN_DIR must hold what tools/bench/kd_ensemble.sh used and made: student.h5, teacher.h5,
# ts42/, nokd/, nokd_s1/, nokd_s2/, v1/ (and its KD runs for the comparison). Each step is
# skipped when its output exists. Models are chosen on val; the last step judges them on test.
set -euo pipefail
run="${1:?run directory of tools/bench/kd_ensemble.sh}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cfg="$here/configs/distill/student-cpu-small.yaml"
pool="${NEIMSCTL_SHARED_DATA:-$here/../shared/data}/pretrain/moses_train_100k.smi"
n_transfer="${N_TRANSFER:-20000}"
cd "$run"
if [ ! -e transfer.smi ]; then
    python "$here/tools/bench/transfer_set.py" fragments "$pool" --library student.h5 > cand.smi
    neimsctl featurize -q --mode student --jobs 2 cand.smi -o cand.h5
    python "$here/tools/bench/transfer_set.py" select student.h5 cand.h5 --n "$n_transfer" > transfer.smi
fi
for mode in student teacher; do
    [ -e "transfer_$mode.h5" ] || neimsctl featurize -q --mode "$mode" --jobs 2 transfer.smi -o "transfer_$mode.h5"
done
[ -e soft_tr.h5 ] || neimsctl softlabel teacher.h5 transfer_teacher.h5 -t ts42/checkpoints/best.pt \
    -t nokd/checkpoints/best.pt -t nokd_s1/checkpoints/best.pt -t nokd_s2/checkpoints/best.pt \
    --part all --samples 10 --batch-size 128 -o soft_tr.h5 --resume
kd() {  # name, then --set overrides
    local name="$1"; shift
    local r=(); [ "$(python3 "$here/tools/run_state.py" "$name")" = partial ] && r=(--resume)
    [ -e "$name/report.md" ] || neimsctl distill student.h5 -s soft_tr.h5 --transfer transfer_student.h5 \
        -c "$cfg" --set train.threads=1 "$@" -o "$name" "${r[@]}" > "$name.log" 2>&1
}
fixed=(--set loss.temperature_start=1.0 --set loss.gamma=0 --set loss.gradnorm=false)
third=(--set data.transfer_fraction=0.33)
kd kd_tr_b10 "${fixed[@]}" "${third[@]}" --set loss.alpha=0.0 --set loss.beta=1.0 &
kd kd_tr_a5 "${fixed[@]}" "${third[@]}" --set loss.alpha=0.5 --set loss.beta=0.5 & wait
