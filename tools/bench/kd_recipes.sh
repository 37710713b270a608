# Sourced by tools/bench/kd_plain_cosine.sh and kd_more_seeds.sh (after `cd RUN_DIR`, with
# $here the repository): the two session-5 recipes on the spec-size student. Both add the
# plain-cosine term; the KD one learns from the teacher ensemble at T = 1, no L_feature, fixed
# alpha = beta = 0.5 (session 4's kd_ens_fixed).
cfg="$here/configs/distill/student-cpu-small.yaml"
pc=(--set loss.plain_cosine=1.0 --set train.threads=1)
kd=(--set loss.temperature_start=1.0 --set loss.gamma=0 --set loss.gradnorm=false
    --set loss.alpha=0.5 --set loss.beta=0.5)
train() {  # name, seed, then distill arguments; skipped when the run finished before
    local name="$1" seed="$2"; shift 2
    [ -e "$name/report.md" ] || neimsctl distill student.h5 -c "$cfg" "${pc[@]}" \
        --set train.seed="$seed" "$@" -o "$name" > "$name.log" 2>&1
}
