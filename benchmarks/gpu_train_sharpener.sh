#!/usr/bin/env bash
# Train the shipped mini sharpener with `dice train` (the code path real models use), then measure the targets.
#
#   benchmarks/gpu_train_sharpener.sh PIPELINE_DIR RUN_DIR [STEPS]
#
# Image mode (the paper's x_t source): 60k fresh training renders written as a captioned folder.
# Re-running the same command resumes the run. Prints the target table last.
set -euo pipefail
MINI=${1:?pipeline dir}
RUN=${2:?run dir}
STEPS=${3:-4000}
PY=${PYTHON:-python3}
IMAGES=$(dirname "$RUN")/sharpener-images
if [ ! -f "$IMAGES/metadata.jsonl" ]; then
  $PY -c "import sys; from dicecfg.world.data import export_image_folder as e
if __name__ == '__main__': e(sys.argv[1], 60000, seed=7, workers=16)" "$IMAGES"
fi
$PY -m dicecfg.cli -q train --model "$MINI" --images "$IMAGES" --steps "$STEPS" --batch-size 128 --lr 5e-4 \
  --guidance-scale 5 --loss l1 --eval-pairs 256 --eval-every 500 --checkpoint-every 500 --log-every 50 --out "$RUN"
$PY - "$RUN" <<'PY'
import json, sys, pathlib
rows = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "stats.jsonl").read_text().splitlines() if l.strip()]
ev = [(r["step"], round(r["eval_loss"], 2)) for r in rows if "eval_loss" in r]
sps = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
print("held-out distillation loss by step:", ev)
print("samples/s (median):", sorted(sps)[len(sps) // 2] if sps else None)
PY
$PY benchmarks/mini_targets.py --model "$MINI" --sharpener "$RUN" --json "${OUT:-/tmp}/targets.json"
