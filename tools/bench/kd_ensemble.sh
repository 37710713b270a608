#!/usr/bin/env bash
# Issue 5, session 4: distillation from a teacher ensemble (the GNN teacher + fingerprint students
# trained without KD), on the compound-grouped 8:1:1 split (seed 42) of one library. Every model
# is selected on the validation part; the last step judges all of them once on the test part.
#
#   tools/bench/kd_ensemble.sh RUN_DIR
#
# RUN_DIR must hold student.h5 and teacher.h5 (neimsctl featurize --mode student / teacher of
# the same records), the finetuned cpu-small teacher in ts42/ and the seed-42 student without
# KD in nokd/ and NEIMS v1 in v1/ (the commands of the issue-5 section in BENCHMARKS.md). Each
# step is skipped when its output exists. About 50 minutes on 2 cores.
set -euo pipefail
run="${1:?run directory with student.h5, teacher.h5, ts42/, nokd/, v1/}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cfg="$here/configs/distill/student-cpu-small.yaml"
cd "$run"
for seed in 1 2; do   # two more students without KD (seed 42 is nokd/)
    [ -e "nokd_s$seed/report.md" ] || neimsctl distill student.h5 --no-kd -c "$cfg" \
        --set train.threads=1 --set train.seed="$seed" -o "nokd_s$seed" > "nokd_s$seed.log" 2>&1 &
done
wait
[ -e soft_ens.h5 ] || neimsctl softlabel teacher.h5 -t ts42/checkpoints/best.pt \
    -t nokd/checkpoints/best.pt -t nokd_s1/checkpoints/best.pt -t nokd_s2/checkpoints/best.pt \
    --part all --samples 10 --batch-size 128 -o soft_ens.h5 --resume
kd() {  # name, then --set overrides
    local name="$1"; shift
    [ -e "$name/report.md" ] || neimsctl distill student.h5 -s soft_ens.h5 -c "$cfg" \
        --set train.threads=1 "$@" -o "$name" > "$name.log" 2>&1
}
plain=(--set loss.temperature_start=1.0 --set loss.gamma=0)
fixed=("${plain[@]}" --set loss.gradnorm=false)
kd kd_ens & kd kd_ens_t1 "${plain[@]}" & wait
kd kd_ens_fixed "${fixed[@]}" --set loss.alpha=0.5 --set loss.beta=0.5 &
kd kd_ens_b8 "${fixed[@]}" --set loss.alpha=0.2 --set loss.beta=0.8 & wait
kd kd_ens_b10 "${fixed[@]}" --set loss.alpha=0.0 --set loss.beta=1.0
python "$here/tools/bench/softlabel_quality.py" teacher.h5 soft_ens.h5 --student-val nokd
python "$here/tools/bench/compare_models.py" student.h5 --out cmp4 --soft teacher-ensemble=soft_ens.h5 \
    teacher-small=ts42/checkpoints/best.pt \
    student-kd-ens-fixed=kd_ens_fixed/checkpoints/best.pt student-kd-ens-t1=kd_ens_t1/checkpoints/best.pt \
    student-kd-ens-b8=kd_ens_b8/checkpoints/best.pt student-kd-ens-b10=kd_ens_b10/checkpoints/best.pt \
    student-kd-ens=kd_ens/checkpoints/best.pt student-nokd=nokd/checkpoints/best.pt \
    student-nokd-s1=nokd_s1/checkpoints/best.pt student-nokd-s2=nokd_s2/checkpoints/best.pt \
    neims-v1=v1/checkpoints/best.pt
