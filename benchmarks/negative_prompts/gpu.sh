#!/usr/bin/env bash
# Negative prompts: two sharpeners for the mini model, trained alike except that one sees random negative prompts as
# c_neg (`dice train --negative-prompts`), then the negative-prompt table (benchmarks/negative_prompts/negative_prompts.py).
#
#   benchmarks/negative_prompts/gpu.sh WORK_DIR [STEPS]
#
# Prompt-only (teacher) mode: a pool of the mini model's own CFG samples is re-noised at every step. The
# negatives are random training captions of another seed, not the test's "a COLOUR SHAPE" prompts. Each
# training is bounded by TRAIN_SECONDS (SIGTERM: it checkpoints); re-running the command resumes.
set -euo pipefail
W=${1:?work dir}
STEPS=${2:-1500}
PY=${PYTHON:-python3}
LIMIT=${TRAIN_SECONDS:-240}
mkdir -p "$W"
[ -f "$W/negatives.txt" ] || $PY -c "import sys; from dicecfg.world.data import export_prompts as e
e(sys.argv[1], 20000, seed=21); e(sys.argv[2], 20000, seed=22)" "$W/prompts.txt" "$W/negatives.txt"
common=(--prompts "$W/prompts.txt" --steps "$STEPS" --batch-size 128 --lr 5e-4 --guidance-scale 5 --loss l1
  --xt-source teacher --teacher-pool 8192 --eval-pairs 256 --eval-every 250 --checkpoint-every 250 --log-every 50)
timeout -s TERM "$LIMIT" $PY -m dicecfg.cli -q train "${common[@]}" --out "$W/plain" || echo "plain: exit $?"
timeout -s TERM "$LIMIT" $PY -m dicecfg.cli -q train "${common[@]}" --negative-prompts "$W/negatives.txt" \
  --out "$W/negs" || echo "negs: exit $?"
for r in plain negs; do
  $PY -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]
print(sys.argv[2], 'held-out loss by step:', [(r['step'], round(r['eval_loss'], 2)) for r in rows if 'eval_loss' in r])
print(sys.argv[2], 'samples/s:', [round(r['samples_per_s']) for r in rows if 'samples_per_s' in r][-3:])" \
    "$W/$r/stats.jsonl" "$r"
done
if [ -f "$W/plain/model.safetensors" ] && [ -f "$W/negs/model.safetensors" ]; then
  $PY benchmarks/negative_prompts/negative_prompts.py --seeds 3 --sharpener mini --sharpener "$W/plain" --sharpener "$W/negs"
fi
