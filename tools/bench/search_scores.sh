#!/usr/bin/env bash
# Which search score identifies best when the library holds predicted spectra (issue 17).
#
# Protocol (issue 5's split): the DEV MassBank spectra featurized into a student shard, split by
# compound 8:1:1 (seed 42) with `neimsctl shards split`; library = the shipped model's predicted
# spectra of the val (or test) compounds + every measured training spectrum; queries = the
# measured val (or test) spectra. Each score is run through `neimsctl eval --score`, which ranks
# with the same engine as `neimsctl search`. Select on val; report test once.
#
# The shipped model was trained on every DEV compound, so its predictions of val/test compounds
# are in-sample: give MODEL=<checkpoint> of a model trained on the train part only, e.g.
#   neimsctl distill WORKDIR/dev.h5 --no-kd -c configs/distill/student-compact.yaml -o RUN
#   MODEL=RUN/checkpoints/best.pt tools/bench/search_scores.sh
#
# usage: [MODEL=ckpt] [PARTS="val test"] [SCORES="cosine entropy composite,--reverse"] \
#        tools/bench/search_scores.sh [MSP] [WORKDIR]   (TSV on stdout)
set -euo pipefail
MSP=${1:-../shared/data/massbank_ei.msp}
W=${2:-/tmp/search/scores}
mkdir -p "$W"
# msp2jsonl exits 1 when it rejects records (reported on stderr); the shard is what counts
[ -s "$W/dev.h5" ] || { neimsctl msp2jsonl -q "$MSP" | neimsctl featurize -q --mode student -o "$W/dev.h5" || [ -s "$W/dev.h5" ]; }
for part in train val test; do
  [ -s "$W/$part.jsonl" ] || neimsctl shards split -q "$W/dev.h5" --part $part -o "$W/$part.jsonl"
done
for part in val test; do
  [ -s "$W/$part.smi" ] || neimsctl shards split -q "$W/dev.h5" --part $part -O smi -o "$W/$part.smi"
  [ -s "$W/pred_$part.jsonl" ] || neimsctl predict -q -O jsonl ${MODEL:+--model "$MODEL"} "$W/$part.smi" -o "$W/pred_$part.jsonl" \
    || [ -s "$W/pred_$part.jsonl" ]
done
printf 'split\tscore\tR@1\tR@5\tR@10\tR@1_mass5\tR@5_mass5\tR@10_mass5\tseconds\n'
for part in ${PARTS:-val test}; do
  for score in ${SCORES:-cosine composite entropy cosine,--reverse composite,--reverse entropy,--reverse}; do
    score=${score//,/ }
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    neimsctl eval "$W/pred_$part.jsonl" "$W/$part.jsonl" -l "$W/train.jsonl" --mass-filter 5 --ks 1,5,10 \
      --score $score --json -q > "$W/eval_${part}_${score// /}.json"
    t1=$(date +%s.%N)
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print('\t'.join([sys.argv[2], sys.argv[3]] + ['%.3f' % m[k] for k in ('recall@1','recall@5','recall@10','recall@1_mass5','recall@5_mass5','recall@10_mass5')] + ['%.0f' % float(sys.argv[4])]))" \
      "$W/eval_${part}_${score// /}.json" "$part" "$score" "$(echo "$t1 - $t0" | bc)"
  done
done
