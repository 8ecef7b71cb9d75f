#!/usr/bin/env bash
# Train the shipped mini sharpener with `dice train` (the code path real models use), then measure the targets.
#
#   benchmarks/mini_sharpener/gpu.sh PIPELINE_DIR RUN_DIR [STEPS]
#
# Prompt-only (teacher) mode: 20,000 training captions (`export_prompts`, seed 21; no held-out combination);
# a pool of the model's own CFG samples (w=5) is re-noised at every step. MODE=image uses 60,000 fresh
# training renders as x_0 instead (the paper's source; PNG decoding makes it about 4x slower here).
# Training stops with a checkpoint after TRAIN_SECONDS (SIGTERM); re-running the command resumes.
# Prints the held-out distillation loss by step, then the target table (benchmarks/mini_sharpener/mini_targets.py).
set -euo pipefail
MINI=${1:?pipeline dir}
RUN=${2:?run dir}
STEPS=${3:-3000}
PY=${PYTHON:-python3}
MODE=${MODE:-teacher}
LIMIT=${TRAIN_SECONDS:-360}
EXTRA=${EXTRA:-}  # more `dice train` options, e.g. EXTRA="--inner-dim 1024"
WORK=$(dirname "$RUN")
if [ "$MODE" = image ]; then
  [ -f "$WORK/sharpener-images/metadata.jsonl" ] || $PY -c "import sys; from dicecfg.world.data import export_image_folder as e
if __name__ == '__main__': e(sys.argv[1], 60000, seed=7, workers=16)" "$WORK/sharpener-images"
  source=(--images "$WORK/sharpener-images")
else
  [ -f "$WORK/sharpener-prompts.txt" ] || $PY -c "import sys; from dicecfg.world.data import export_prompts
export_prompts(sys.argv[1], 20000, seed=21)" "$WORK/sharpener-prompts.txt"
  source=(--prompts "$WORK/sharpener-prompts.txt" --xt-source teacher --teacher-pool 8192)
fi
timeout -s TERM "$LIMIT" $PY -m dicecfg.cli -q train --model "$MINI" "${source[@]}" --steps "$STEPS" \
  --batch-size 128 --lr 5e-4 --guidance-scale 5 --loss l1 --eval-pairs 256 --eval-every 250 \
  --checkpoint-every 250 --log-every 50 $EXTRA --out "$RUN" || echo "train: exit $? (re-run to resume)"
$PY - "$RUN" <<'PY'
import json, sys, pathlib
rows = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "stats.jsonl").read_text().splitlines() if l.strip()]
ev = [(r["step"], round(r["eval_loss"], 2)) for r in rows if "eval_loss" in r]
sps = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
print("held-out distillation loss by step:", ev)
print("samples/s (median):", sorted(sps)[len(sps) // 2] if sps else None)
PY
$PY benchmarks/mini_sharpener/mini_targets.py --model "$MINI" --sharpener "$RUN" --json "${OUT:-/tmp}/targets.json"
