#!/usr/bin/env bash
# Resume equivalence on real data (issue 4): the same finetune run (a) uninterrupted and (b) killed
# with SIGKILL in the middle of an epoch, then resumed with --resume; prints both runs' per-epoch
# validation metrics and whether the final weights are bit-identical.
#
#   tools/bench/resume_equivalence.sh TEACHER_SHARD [OUT_DIR] [EPOCHS]
set -euo pipefail
shard="${1:?teacher-mode shard}" out="${2:-resume-eq}" epochs="${3:-3}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cfg="$here/configs/finetune/teacher-cpu-small.yaml"
rm -rf "$out"; mkdir -p "$out"
sets=(--set "train.epochs=$epochs" --set train.threads=1 --set train.num_workers=0)
neimsctl finetune "$shard" -c "$cfg" "${sets[@]}" -o "$out/full" -q
neimsctl finetune "$shard" -c "$cfg" "${sets[@]}" -o "$out/killed" -q &
pid=$!
# wait until the first epoch is logged, then a few seconds into the second one
until [ -s "$out/killed/train_log.jsonl" ] && grep -q '"kind":"epoch"' "$out/killed/train_log.jsonl"; do sleep 0.5; done
sleep 5
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
echo "killed (SIGKILL) during epoch 2; resuming" >&2
neimsctl finetune "$shard" -c "$cfg" "${sets[@]}" -o "$out/killed" --resume -q
python - "$out" <<'PY'
import json, sys
import torch
out = sys.argv[1]
def epochs(run):
    recs = [json.loads(x) for x in open(f"{out}/{run}/train_log.jsonl")]
    last = {}
    for r in recs:
        if r.get("kind") == "epoch":
            last[r["epoch"]] = r  # a resumed epoch replaces the killed one
    return [last[k] for k in sorted(last)]
full, killed = epochs("full"), epochs("killed")
print("| epoch | run | train loss | val Recall@10 | val mean cosine |")
print("|---|---|---|---|---|")
for a, b in zip(full, killed):
    for name, r in (("uninterrupted", a), ("SIGKILL + resume", b)):
        print(f"| {r['epoch']} | {name} | {r['loss']:.6f} | {r['val']['val_recall_at_10']:.4f} | "
              f"{r['val']['val_mean_cosine']:.4f} |")
wa = torch.load(f"{out}/full/checkpoints/last.pt", weights_only=True)["model"]
wb = torch.load(f"{out}/killed/checkpoints/last.pt", weights_only=True)["model"]
same = all(torch.equal(wa[k], wb[k]) for k in wa)
diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point())
print(f"\nfinal weights bit-identical: {same} (max |difference| {diff:.3g})")
PY
