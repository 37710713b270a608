#!/usr/bin/env bash
# Issue 18: ensembles at predict time. Which members, and which averaging space (linear vs
# sqrt intensity), identify best? Judged on the validation compounds of the 8:1:1 split (seed 42)
# with the protocol of compare_models.py (library = one prediction per compound + every training
# spectrum; queries = the measured spectra), then, for the chosen ones, once on the test split.
#
#   tools/bench/ensembles.sh RUN_DIR          # RUN_DIR: a SPLIT=test run of train_default_model.sh
#   TEST="ens4-sqrt ens5-sqrt" tools/bench/ensembles.sh RUN_DIR   # + the test split for those
#
# Members (all trained on the training part only): the GNN teacher (teacher/), the three
# spec-size students without KD (member_s42, member_s1, member_s2) and the compact distilled
# student (student/). Each ensemble is written once with `neimsctl ensemble --fp32 --average A`.
set -euo pipefail
run="${1:?run directory of tools/train_default_model.sh (SPLIT=test)}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$run"
ck() { echo "$run/$1/checkpoints/best.pt"; }
declare -A sets=(
    [ens3]="$(ck member_s42) $(ck member_s1) $(ck member_s2)"
    [ens4]="$(ck teacher) $(ck member_s42) $(ck member_s1) $(ck member_s2)"
    [ens5]="$(ck teacher) $(ck member_s42) $(ck member_s1) $(ck member_s2) $(ck student)"
    [compact_teacher]="$(ck student) $(ck teacher)"
)
mkdir -p ens
models=(teacher="$(ck teacher)" student-s42="$(ck member_s42)" compact-kd="$(ck student)")
for name in "${!sets[@]}"; do
    for avg in sqrt linear; do
        f="ens/$name-$avg.pt"
        # shellcheck disable=SC2086
        [ -e "$f" ] || neimsctl ensemble ${sets[$name]} --fp32 --average "$avg" -o "$f" -q
        models+=("$name-$avg=$run/$f")
    done
done
python "$here/tools/bench/compare_models.py" student.h5 --out "$run/ens_val" --part val --no-speed \
    "${models[@]}" | tee "$run/ens_val.md"
[ -n "${TEST:-}" ] || exit 0
chosen=()
for name in $TEST; do
    for m in "${models[@]}"; do [ "${m%%=*}" = "$name" ] && chosen+=("$m"); done
done
python "$here/tools/bench/compare_models.py" student.h5 --out "$run/ens_test" --no-speed \
    "${chosen[@]}" | tee "$run/ens_test.md"
