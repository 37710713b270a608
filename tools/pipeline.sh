#!/usr/bin/env bash
# The whole NEIMS v2 pipeline on one MSP library (+ MOL directory), resumable:
#
#   msp2jsonl -> featurize (student, teacher) -> pretrain -> finetune -> softlabel -> distill
#   -> predict (the held-out test compounds) -> eval (against their measured spectra)
#
# Every step writes into OUT (default: pipeline-run) and is skipped when its output is complete;
# an interrupted training step continues from its checkpoint (--resume). Run it again after a
# stop and it goes on where it stopped.
#
#   tools/pipeline.sh neimsctl/resources/sample/sample.msp --demo       # the bundled sample, ~3 min
#   tools/pipeline.sh NIST17.MSP --mol-dir mol_files --profile cpu-small -o nist17-run
#   tools/pipeline.sh lib.msp --pretrain-smiles moses_train.smi.zst --profile paper --device cuda
#
# Options:
#   -p, --profile NAME        cpu-small (default) | paper: configs/<stage>/*-NAME.yaml
#   -m, --mol-dir DIR         ID<id>.MOL files for records without a structure (NIST style)
#   -s, --pretrain-smiles F   SMILES stream for bond-masking pretraining (default: the library's
#                             own structures; e.g. ../shared/data/pretrain/moses_train.smi.zst)
#   -o, --out DIR             run directory (default: pipeline-run)
#   --device DEV              auto | cpu | cuda | cuda:N (default: auto)
#   --demo                    short budgets for a smoke run (pretrain 2 x 50 steps, finetune
#                             30 epochs, distill 12 epochs): minutes on 2 CPU cores
#   -j, --jobs N              worker processes for msp2jsonl / featurize (default: 1)
#   -h, --help                this text
#
# Exit status: 0 when every step succeeded (records rejected by msp2jsonl are listed in
# OUT/rejects.jsonl and do not stop the run), 2 on a usage error, else the failing step's status.
set -euo pipefail

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "pipeline.sh: $*" >&2; exit 2; }

profile=cpu-small mol_dir="" pretrain_smiles="" out=pipeline-run device=auto demo=0 jobs=1 lib=""
while [ $# -gt 0 ]; do
    case "$1" in
        -p|--profile) profile="${2:?}"; shift 2 ;;
        -m|--mol-dir) mol_dir="${2:?}"; shift 2 ;;
        -s|--pretrain-smiles) pretrain_smiles="${2:?}"; shift 2 ;;
        -o|--out) out="${2:?}"; shift 2 ;;
        --device) device="${2:?}"; shift 2 ;;
        -j|--jobs) jobs="${2:?}"; shift 2 ;;
        --demo) demo=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$lib" ] || die "one library at a time (got $lib and $1)"; lib="$1"; shift ;;
    esac
done
[ -n "$lib" ] || { usage >&2; die "no library given"; }
[ -r "$lib" ] || die "cannot read $lib"
[ -z "$mol_dir" ] || [ -d "$mol_dir" ] || die "--mol-dir $mol_dir is not a directory"
here="$(cd "$(dirname "$0")/.." && pwd)"
cfg() { # cfg STAGE -> the profile's config for that stage
    local f="$here/configs/$1/$2-$profile.yaml"
    [ -r "$f" ] || die "no config $f for profile $profile"
    echo "$f"
}
pre_cfg=$(cfg pretrain teacher) ft_cfg=$(cfg finetune teacher) kd_cfg=$(cfg distill student)
command -v neimsctl >/dev/null || die "neimsctl is not on PATH (pip install -e . first)"
mkdir -p "$out"
log() { printf '\n== pipeline.sh [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
done_marker() { [ -e "$out/.done-$1" ]; }
mark_done() { touch "$out/.done-$1"; }
# train STEP DIR CMD...: run a training command, with --resume when DIR holds a checkpoint
train() {
    local step="$1" dir="$2"; shift 2
    if done_marker "$step"; then log "$step: done before, skipped"; return; fi
    local resume=() state
    state="$(python3 "$here/tools/run_state.py" "$dir")"
    # a run that finished but was stopped before its marker was written (a kill between the
    # two): done; the training commands would refuse its directory without --resume
    if [ "$state" = done ]; then mark_done "$step"; log "$step: done before, skipped"; return; fi
    # a run in $dir (a checkpoint, or the log of one killed before its first checkpoint) is
    # continued: without --resume the training commands refuse a directory that holds a run
    if [ "$state" = partial ]; then
        resume=(--resume); log "$step: resuming in $dir"
    else
        log "$step"
    fi
    "$@" -o "$dir" --device "$device" "${resume[@]}"
    mark_done "$step"
}

pre_set=() ft_set=() kd_set=()
if [ "$demo" = 1 ]; then
    pre_set=(--set train.epochs=2 --steps-per-epoch 50)
    ft_set=(--set train.epochs=30)
    kd_set=(--set train.epochs=12 --set loss.warmup_epochs=4)
fi

# 1. records --------------------------------------------------------------------------------
if done_marker records; then log "msp2jsonl: done before, skipped"; else
    log "msp2jsonl $lib"
    rc=0
    neimsctl msp2jsonl "$lib" ${mol_dir:+--mol-dir "$mol_dir"} --jobs "$jobs" \
        --rejects "$out/rejects.jsonl" -o "$out/records.jsonl" || rc=$?
    [ "$rc" -le 1 ] || exit "$rc"   # 1 = some records rejected: listed in rejects.jsonl
    mark_done records
fi

# 2. features -------------------------------------------------------------------------------
for mode in student teacher; do
    if [ -e "$out/$mode.h5" ]; then log "featurize --mode $mode: done before, skipped"; continue; fi
    log "featurize --mode $mode"
    neimsctl featurize --mode "$mode" --jobs "$jobs" "$out/records.jsonl" -o "$out/$mode.h5" --resume   # continues an interrupted run, else starts afresh
done

# 3-4. teacher: bond-masking pretraining, then finetuning on the spectra ----------------------
train pretrain "$out/pretrain" neimsctl pretrain "${pretrain_smiles:-$out/records.jsonl}" \
    -c "$pre_cfg" "${pre_set[@]}"
train finetune "$out/teacher" neimsctl finetune "$out/teacher.h5" -c "$ft_cfg" \
    --init "$out/pretrain/checkpoints/best.pt" "${ft_set[@]}"

# 5. soft labels (MC dropout) for the training compounds ---------------------------------------
if [ -e "$out/soft_labels.h5" ]; then log "softlabel: done before, skipped"; else
    log "softlabel"
    resume=(); [ -e "$out/soft_labels.h5.partial" ] && resume=(--resume)
    neimsctl softlabel "$out/teacher.h5" -t "$out/teacher/checkpoints/best.pt" --part train \
        --device "$device" -o "$out/soft_labels.h5" "${resume[@]}"
fi

# 6. the student, distilled ----------------------------------------------------------------
train distill "$out/student" neimsctl distill "$out/student.h5" -s "$out/soft_labels.h5" \
    -c "$kd_cfg" "${kd_set[@]}"

# 7-8. predict the held-out test compounds and evaluate against their measured spectra --------
log "predict + eval on the test compounds (never seen in training)"
neimsctl shards split "$out/student.h5" --part test -O smi -o "$out/test.smi"
neimsctl shards split "$out/student.h5" --part test -o "$out/test.jsonl"
neimsctl shards split "$out/student.h5" --part train -o "$out/train.jsonl"
neimsctl predict --model "$out/student/checkpoints/best.pt" --device "$device" \
    -o "$out/test.predicted.msp" < "$out/test.smi"
# exit 1: some records were not used (named on stderr); the metrics are written all the same
neimsctl eval "$out/test.predicted.msp" "$out/test.jsonl" -l "$out/train.jsonl" \
    --mass-filter 5 --report "$out/eval" > "$out/eval.json" || [ $? -eq 1 ]

first=$(head -n 1 "$out/test.smi")
log "a predicted spectrum: ${first}"
echo "${first}" | neimsctl predict --model "$out/student/checkpoints/best.pt" --top 10 -q
log "eval of the test compounds (library = their predicted spectra + every training spectrum)"
sed -n '/^| /p' "$out/eval/report.md" | head -n 12
log "done: models in $out/teacher and $out/student, predictions $out/test.predicted.msp, report $out/eval/report.md"
