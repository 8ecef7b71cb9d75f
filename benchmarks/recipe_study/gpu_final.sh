#!/usr/bin/env bash
# The recipe study, the last GPU calls: the final table (baselines, the shipped sharpener, candidates) on the validation
# set and both held-out seed sets, `dice ceiling` on the mini model, and, meanwhile, longer candidate trainings
# that checkpoint and are handed back for the next call to resume (run folders under .gpu/runs travel in).
#
#   benchmarks/recipe_study/gpu_final.sh "TRAIN_VARIANTS" STEPS TRAIN_SECONDS "SHARPENER_DIRS" "CEILING_ARGS"
set -uo pipefail
W=/tmp/w
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p "$W" "$OUT/r"
[ -d .gpu/runs ] && cp -r .gpu/runs/. "$W/"
if [ -n "$1" ]; then
  python3 benchmarks/recipe_study/recipe_study.py train --work "$W" --variants "$1" --steps "$2" --train-seconds "$3" > "$OUT/r/train.log" 2>&1 &
fi
[ -n "${EVAL_AFTER:-}" ] && wait  # score the runs trained above, once they are done
if [ -n "$4" ]; then
  python3 benchmarks/recipe_study/recipe_study.py eval --work "$W" --variants "$4" --sets validation,heldout-a,heldout-b \
    --json "$OUT/r/final.json" ${EVAL_EXTRA:-} 2>&1 | grep -v "^{" | grep -v Loading | tee "$OUT/r/final.log"
fi
if [ -n "$5" ]; then
  python3 -m dicecfg.cli -q ceiling $5 --out "$W/ceiling" > "$OUT/r/ceiling.log" 2>&1
  cp "$W"/ceiling/ceiling.* "$W"/ceiling/grid.png "$OUT/r/" 2>/dev/null; tail -7 "$OUT/r/ceiling.log"
fi
if [ -n "${NEG:-}" ]; then
  args=(); for d in ${4//,/ }; do [ -f "$d/config.json" ] && args+=(--sharpener "$d"); done
  python3 benchmarks/negative_prompts/negative_prompts.py --seeds 4 --sharpener mini "${args[@]}" 2>&1 | grep "|" | tee "$OUT/r/negatives.log"
fi
wait
for v in ${1//,/ }; do  # each run folder (checkpoint, run.json, stats) in one file, to resume next call
  (cd "$W" && tar cf "$OUT/run_${v//+/_}.tar" "$v"/run.json "$v"/stats.jsonl "$v"/checkpoint.safetensors $(ls "$v"/config.json "$v"/model.safetensors 2>/dev/null))
done
tail -12 "$OUT/r/train.log" 2>/dev/null
(cd "$OUT" && tar czf results.tgz r && rm -r r)
ls -la "$OUT"
