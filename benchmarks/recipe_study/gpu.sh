#!/usr/bin/env bash
# The recipe study on one lent GPU (run from the repository root; wheels in .whl, see the device notes).
#
#   benchmarks/recipe_study/gpu.sh VARIANTS STEPS TRAIN_SECONDS EVAL_SETS
#
# Trains the comma-separated VARIANTS of benchmarks/recipe_study/recipe_study.py at once (each bounded by TRAIN_SECONDS),
# scores them and the baselines on EVAL_SETS, and leaves logs, the table (JSON) and the trained sharpeners
# in $OUT (at most 8 files of 16 MB).
set -uo pipefail
VARIANTS=${1:?variants}
STEPS=${2:-1200}
SECS=${3:-330}
SETS=${4:-validation,heldout-a}
W=${WORK:-/tmp/w}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/recipe_study/recipe_study.py train --work "$W" --variants "$VARIANTS" --steps "$STEPS" --train-seconds "$SECS" \
  ${TRAIN_EXTRA:-} 2>&1 | tee "$OUT/train.log"
python3 benchmarks/recipe_study/recipe_study.py eval --work "$W" --variants "$VARIANTS" --sets "$SETS" --json "$OUT/study.json" \
  ${EVAL_EXTRA:-} 2>&1 | grep -v "^{" | tee "$OUT/eval.log"
if [ -n "${NEG:-}" ]; then  # the negative-prompt table for the variants that finished
  args=(); for v in ${VARIANTS//,/ }; do [ -f "$W/$v/config.json" ] && args+=(--sharpener "$W/$v"); done
  python3 benchmarks/negative_prompts/negative_prompts.py --seeds 4 --sharpener mini "${args[@]}" 2>&1 | grep "|" | tee "$OUT/negatives.log"
fi
(cd "$W" && tar czf "$OUT/runs.tgz" */stats.jsonl */run.json */config.json 2>/dev/null)
python3 - "$W" "$OUT" ${VARIANTS//,/ } <<'PY'  # the sharpeners' weights, packed into files of < 16 MB
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
work, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
packs, cur, size = [], {}, 0
for n in names:
    run = work / n
    f = run / "model.safetensors" if (run / "model.safetensors").is_file() else run / "checkpoint.safetensors"
    if not f.is_file():
        continue
    t = {f"{n}/{k.removeprefix('model.')}": v for k, v in load_file(str(f)).items() if not k.startswith("optim.")}
    b = sum(v.numel() * v.element_size() for v in t.values())
    if cur and size + b > 15_000_000:
        packs.append(cur); cur, size = {}, 0
    cur.update(t); size += b
if cur:
    packs.append(cur)
for i, p in enumerate(packs):
    save_file(p, str(out / f"weights_{i}.safetensors"))
PY
ls -la "$OUT"
