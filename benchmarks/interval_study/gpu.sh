#!/usr/bin/env bash
# The interval study in one call on one lent GPU (run from the repository root; wheels in .whl, see the device
# notes). At once: the teacher pool and the variants' trainings, and the peers on each set (a process per set:
# the oracle runs on the CPU). Then every variant's candidates on validation (a process each), then the rule and
# held-out A and B (a process each), then the negative-prompt probe of the choice. Results and weights in $OUT.
#
#   benchmarks/interval_study/gpu.sh [VARIANTS] [STEPS] [TRAIN_SECONDS] [EARLIER_TUNE_JSONS]
set -uo pipefail
VARIANTS=${1:-e2,e3,e3-w7,e3-blocks,e5,full-x0}
STEPS=${2:-400}
SECS=${3:-210}
EARLIER=${4:-benchmarks/interval_study/results/call1_tune_mini.json}  # the shipped sharpener's, measured before
W=/tmp/w
S=benchmarks/interval_study/study.py
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p "$W" "$OUT/r"
t0=$(date +%s)
python3 $S train --work "$W" --variants "$VARIANTS" --steps "$STEPS" --train-seconds "$SECS" --pool 4096 > "$OUT/r/train.log" 2>&1 &
TRAIN=$!
[ -n "${PEERS:-}" ] && for set in validation heldout-a heldout-b; do  # PEERS=1: the peers too (a process per set)
  timeout 330 python3 $S peers --work "$W" --sets $set --json "$OUT/r/peers_$set.json" > "$OUT/r/peers_$set.log" 2>&1 &
done
wait $TRAIN
echo "trained at $(( $(date +%s) - t0 )) s"; grep -E "exit|held-out" "$OUT/r/train.log"
for v in ${VARIANTS//,/ }; do
  full=--no-full; [ "$v" = full-x0 ] && full=--full
  [ -f "$W/$v/config.json" ] && timeout 120 python3 $S tune --work "$W" --sharpener "$W/$v" --alphas 1 1.5 \
    --stops 0.1 0.15 0.25 $full --json "$W/tune_$v.json" > "$OUT/r/tune_$v.log" 2>&1 &
done
wait
echo "tuned at $(( $(date +%s) - t0 )) s"
for set in heldout-a heldout-b; do
  timeout 80 python3 $S final --work "$W" --sets $set --json "$OUT/r/final_$set.json" --tuned $EARLIER "$W"/tune_*.json > "$OUT/r/final_$set.log" 2>&1 &
done
wait
cat "$OUT"/r/final_*.log | grep -E "^\||overall"
cp "$W"/tune_*.json "$OUT/r/"
best=$(python3 -c "import json;print(json.load(open('$OUT/r/final_heldout-a.json'))['overall']['sharpener'])")
timeout 40 python3 benchmarks/negative_prompts/negative_prompts.py --seeds 4 --sharpener mini $( [ "$best" != mini ] && echo --sharpener "$best" ) 2>&1 | grep "|" | tee "$OUT/r/negatives.log"
echo "study done at $(( $(date +%s) - t0 )) s"
(cd "$OUT" && tar czf results.tgz r && rm -r r)
runs=(); for v in ${VARIANTS//,/ }; do [ -f "$W/$v/config.json" ] && runs+=("$v"); done
half=$(( (${#runs[@]} + 1) / 2 ))  # the runs (weights, config, stats) in two files, each under 16 MB
for part in a b; do
  [ $part = a ] && sel=("${runs[@]:0:$half}") || sel=("${runs[@]:$half}")
  [ ${#sel[@]} -gt 0 ] && (cd "$W" && tar czf "$OUT/runs_$part.tgz" $(for v in "${sel[@]}"; do echo "$v"/stats.jsonl "$v"/run.json "$v"/config.json "$v"/model.safetensors; done))
done
# the extra cost of a time-shaped DICE call on full-size SD1.5 (random weights), fast path, batch 1, idle GPU
timeout 120 python3 -m dicecfg.cli -q bench --arch sd15 --batch-sizes 1 --fast graphs --repeats 3 --warmup 1 \
  --no-decode --dice-stop 0.15 --time-edges 918 871 --out "$OUT/bench_sd15.json" 2>&1 | tail -3 | tee "$OUT/bench.log"
echo "done at $(( $(date +%s) - t0 )) s"
ls -la "$OUT"
