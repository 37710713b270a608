#!/usr/bin/env bash
# Retrain the model shipped in neimsctl/resources/models/ from scratch, with the project's own
# commands, on the MassBank EI library (about 35 minutes on 2 CPU cores: the SPLIT=test run of
# session 19 took 30; the GNN teacher ~5 and the spec-size students ~11 minutes each, one core
# each, two at a time; the compact students 1.5-3 minutes each):
#
#   tools/train_default_model.sh [LIBRARY.msp] [RUN_DIR]
#
# defaults: ../shared/data/massbank_ei.msp and default-model-run. Steps (each resumable: an
# interrupted run continues when started again):
#   1. msp2jsonl, featurize --mode student / teacher
#   2. finetune the teacher (configs/finetune/teacher-cpu-small.yaml)
#   3. the rest of the teacher ensemble: three spec-size students without KD (seeds 42, 1, 2)
#   4. softlabel: MC-dropout soft labels of the ensemble (10 samples per member)
#   5. distill the compact student (configs/distill/student-compact.yaml) from them, three times
#      (seeds 42, 1, 2; DISTILLED=1: seed 42 only): their int8 ensemble, its linear average
#      raised to the power SHARPEN (1.1), is the shipped default
#   6. a compact student without KD (seed 42); the shipped teacher ensemble (predict --model
#      teacher) = the GNN teacher + that student + the default's three members, included by
#      reference (neimsctl ensemble --int8 --include)
#   7. export: the three distilled students' int8 ensemble (DISTILLED=1: the one student in int8)
#      + model card -> neimsctl/resources/models/student-default.{pt,json};
#      the teacher's file (its own two members) + card -> teacher-default.{pt,json}
#
# The shipped model is trained on ALL compounds (no val or test part; each model's last epoch):
# the test-split figures in its card come from the same recipe run on the 8:1:1 split first
# (SPLIT=test tools/train_default_model.sh LIB TEST_RUN trains on its train + val compounds and,
# instead of exporting, judges the default, its seed-42 student alone and the teacher
# ensemble on the test compounds and on the replicate subset: TEST_RUN/cmp-test.md); TEST_CMP=TEST_RUN/cmp-test
# tools/train_default_model.sh then writes those figures into the model cards.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
lib="${1:-$here/../shared/data/massbank_ei.msp}"
out="${2:-default-model-run}"
split="${SPLIT:-all}"
[ -r "$lib" ] || { echo "train_default_model.sh: cannot read $lib" >&2; exit 2; }
mkdir -p "$out"
# FINAL_FIT=1 (the default): every model trains on train + val with the recipe's fixed epochs and
# keeps its last epoch (the recipe, epochs included, was chosen on val before: BENCHMARKS.md,
# session 26; leaving out an eighth of the training compounds cost val mean cosine -0.011);
# FINAL_FIT=0 keeps a val part and the best epoch by val Recall@10 (the recipe before session 26)
if [ "${FINAL_FIT:-1}" = 1 ]; then
    if [ "$split" = test ]; then sets=(--set "data.split=[0.9,0.0,0.1]"); else sets=(--set "data.split=[1.0,0.0,0.0]"); fi
elif [ "$split" = test ]; then
    sets=()
else
    sets=(--set "data.split=[0.9,0.1,0.0]")
fi
# every student (the ensemble's members and the distilled one) also reads the fragment masses
# (formats/features.v1.md) through its input and the head's fragment path; FRAGMENTS=0 trains
# the recipe shipped before session 18 (fingerprints only)
# both ensembles raise their averaged spectrum to this power (predict --sharpen): chosen on the
# validation split (BENCHMARKS.md, session 30: 1.1 over 1.0-1.5); SHARPEN=1 for the plain average
SHARPEN="${SHARPEN:-1.1}"
students=()
[ "${FRAGMENTS:-1}" = 1 ] && students=(--set model.fragments=true --set model.fragment_channels=4)
# --resume for a run directory that holds a run (a checkpoint, or the log of a run killed before
# its first one): without it the training commands refuse such a directory
resume() { [ "$(python3 "$here/tools/run_state.py" "$1")" = partial ] && echo --resume || true; }
done_() { [ "$(python3 "$here/tools/run_state.py" "$1")" = done ]; }   # every epoch of its config trained
step() { printf '\n== train_default_model.sh [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ ! -e "$out/records.jsonl" ]; then
    step msp2jsonl
    neimsctl msp2jsonl "$lib" --rejects "$out/rejects.jsonl" -o "$out/records.jsonl" || [ $? -eq 1 ]
fi
for mode in student teacher; do
    [ -e "$out/$mode.h5" ] || { step "featurize $mode"; neimsctl featurize --mode "$mode" "$out/records.jsonl" -o "$out/$mode.h5" --resume; }
done
teacher() {
    done_ "$out/teacher" && return 0
    neimsctl finetune "$out/teacher.h5" -c "$here/configs/finetune/teacher-cpu-small.yaml" "${sets[@]}" \
        -o "$out/teacher" $(resume "$out/teacher")
}
member() {  # seed: a spec-size student without KD, one thread (two train side by side)
    local dir="$out/member_s$1"
    done_ "$dir" && return 0
    neimsctl distill "$out/student.h5" --no-kd -c "$here/configs/distill/student-cpu-small.yaml" \
        "${sets[@]}" "${students[@]}" --set train.threads=1 --set train.seed="$1" -o "$dir" $(resume "$dir") \
        2> "$dir.log"
}
step "finetune the GNN teacher, and the first student of the ensemble beside it"
# two at a time on the 2 cores; `wait PID` returns each job's status, so set -e stops on a failure
teacher & a=$!; member 42 & b=$!; wait "$a"; wait "$b"
step "the rest of the teacher ensemble: students without KD, seeds 1 and 2 (logs in $out/member_s*.log)"
member 1 & a=$!; member 2 & b=$!; wait "$a"; wait "$b"
if [ ! -e "$out/soft_labels.h5" ]; then
    step "softlabel: the GNN teacher + 3 students, 10 MC samples each"
    r=(); [ -e "$out/soft_labels.h5.partial" ] && r=(--resume)
    neimsctl softlabel "$out/teacher.h5" -t "$out/teacher/checkpoints/best.pt" \
        -t "$out/member_s42/checkpoints/best.pt" -t "$out/member_s1/checkpoints/best.pt" \
        -t "$out/member_s2/checkpoints/best.pt" --samples 10 --batch-size 128 --part all \
        -o "$out/soft_labels.h5" "${r[@]}"
fi
distilled() {  # dir seed threads: a compact student distilled from the soft labels
    local dir="$out/$1"
    done_ "$dir" && return 0
    neimsctl distill "$out/student.h5" -s "$out/soft_labels.h5" \
        -c "$here/configs/distill/student-compact.yaml" "${sets[@]}" "${students[@]}" \
        --set train.seed="$2" --set train.threads="$3" -o "$dir" $(resume "$dir") 2> "$dir.log"
}
mkdir -p "$out/models"
if [ "${DISTILLED:-3}" = 3 ]; then
    # the shipped default: the distilled students of seeds 42, 1 and 2, averaged (an int8
    # ensemble file); DISTILLED=1 ships the single student of seed 42 (the recipe of session 18)
    step "distill three compact students (seeds 42, 1, 2; logs in $out/student*.log)"
    distilled student 42 2
    distilled student_s1 1 1 & a=$!; distilled student_s2 2 1 & b=$!; wait "$a"; wait "$b"
    [ -e "$out/models/student-default.pt" ] || neimsctl ensemble "$out/student/checkpoints/best.pt" \
        "$out/student_s1/checkpoints/best.pt" "$out/student_s2/checkpoints/best.pt" --int8 \
        --average linear --sharpen "$SHARPEN" -o "$out/models/student-default.pt"
else
    step "distill the compact student (seed 42; log in $out/student.log)"
    distilled student 42 2
    [ -e "$out/models/student-default.pt" ] || python "$here/tools/export_model.py" \
        "$out/student/checkpoints/best.pt" --weights int8 "$out/models/student-default.pt"
fi
compact() {  # seed: a compact student without KD, a member of the shipped teacher ensemble
    local dir="$out/compact_s$1"
    done_ "$dir" && return 0
    neimsctl distill "$out/student.h5" --no-kd -c "$here/configs/distill/student-compact.yaml" \
        "${sets[@]}" "${students[@]}" --set train.threads="$2" --set train.seed="$1" -o "$dir" \
        $(resume "$dir") 2> "$dir.log"
}
step "a compact student without KD (seed 42; log in $out/compact_s42.log)"
compact 42 2
if [ ! -e "$out/models/teacher-default.pt" ]; then
    # its own members: the GNN teacher and the no-KD student; the default student's members are
    # included by reference (ensemble --include: the two shipped files do not store them twice)
    step "the teacher ensemble: the GNN teacher + the no-KD student + the default's members, int8"
    neimsctl ensemble "$out/teacher/checkpoints/best.pt" "$out/compact_s42/checkpoints/best.pt" \
        --include "$out/models/student-default.pt" --int8 --average linear --sharpen "$SHARPEN" \
        -o "$out/models/teacher-default.pt"
fi
if [ "$split" = test ]; then
    step "evaluate on the test compounds, and on those with a measured replicate (-> $out/cmp-test)"
    # the default and the teacher as they would ship; "student1": the seed-42 student alone
    rows=(student="$out/models/student-default.pt" teacher="$out/models/teacher-default.pt")
    if [ "${DISTILLED:-3}" = 3 ]; then
        [ -e "$out/student1-int8.pt" ] || python "$here/tools/export_model.py" \
            "$out/student/checkpoints/best.pt" --weights int8 "$out/student1-int8.pt"
        rows+=(student1="$out/student1-int8.pt")
    fi
    python "$here/tools/bench/compare_models.py" "$out/student.h5" --out "$out/cmp-test" --no-speed \
        "${rows[@]}" | tee "$out/cmp-test.md"
else
    # TEST_CMP=DIR: the cmp-test directory of a SPLIT=test run of this recipe, for the model cards
    card() {  # name: the test figures and the replicate subset of that model in TEST_CMP
        [ -n "${TEST_CMP:-}" ] || return 0
        printf '%s\n' --eval "$TEST_CMP/$1.eval.json" \
            --replicate "$TEST_CMP/$1.query_rep.eval.json" "$TEST_CMP/replicate.query_rep.eval.json" \
            --notes "test_metrics and replicate_subset: the same recipe (SPLIT=test) on the compound-grouped 8:1:1 split (seed 42), measured once on its test compounds (compare_models.py, BENCHMARKS.md); the shipped weights were trained on every compound$([ "${FINAL_FIT:-1}" = 1 ] && echo ', the last epoch of each model' || echo ' (0.9 train / 0.1 val)')"
    }
    step "export the default student and the teacher ensemble (--model teacher), int8, with model cards"
    mapfile -t s < <(card student); mapfile -t t < <(card teacher)
    # the student first: the teacher includes it, and export checks it loads beside it
    python "$here/tools/export_model.py" "$out/models/student-default.pt" \
        "$here/neimsctl/resources/models/student-default.pt" --train-log "$out/student/train_log.jsonl" \
        "${s[@]}" --command "tools/train_default_model.sh $lib"
    python "$here/tools/export_model.py" "$out/models/teacher-default.pt" \
        "$here/neimsctl/resources/models/teacher-default.pt" --train-log "$out/compact_s42/train_log.jsonl" \
        "${t[@]}" --command "tools/train_default_model.sh $lib"
fi
