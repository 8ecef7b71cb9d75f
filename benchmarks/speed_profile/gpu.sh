#!/usr/bin/env bash
# Runs of the speed profile on one lent GPU, one after another (timings must not share the card), each appending
# its row to $OUT/rows.jsonl; a run that would start after DEADLINE seconds is skipped. From the repository root,
# wheels in .whl (see the device notes). "old:ARGS" runs ARGS on the code in .old/src (a baseline: carry .old,
# made by `git archive COMMIT src | tar -x -C .old`); "cli:ARGS" runs `dice ARGS` instead of the study script;
# a leading "T=SECONDS:" caps that run's time (else it may run until DEADLINE + 40 s): at the cap a distill run gets
# SIGTERM, ends its step and still writes the windows it logged ("interrupted": true); 20 s later it is killed.
#
#   benchmarks/speed_profile/gpu.sh DEADLINE "what args" "what args" ...
#   benchmarks/speed_profile/gpu.sh 540 "sample --arch pixart --batch-size 1 --profile 1" "old:distill --variant eager"
set -uo pipefail
DEADLINE=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
t0=$(date +%s)
for args in "$@"; do
  now=$(( $(date +%s) - t0 ))
  if [ "$now" -ge "$DEADLINE" ]; then echo "skipped at ${now}s: $args"; continue; fi
  echo "== ${now}s: $args"
  cap=$(( DEADLINE + 40 - now ))
  case $args in T=*) t=${args%%:*}; t=${t#T=}; args=${args#*:}; [ "$t" -lt "$cap" ] && cap=$t;; esac
  src=$PWD/src; cmd=(benchmarks/speed_profile/where_time_goes.py); tail=(--json "$OUT/rows.jsonl")
  case $args in old:*) src=$PWD/.old/src; args=${args#old:}; tail+=(--code old);; esac
  case $args in cli:*) cmd=(-m dicecfg.cli); args=${args#cli:}; tail=();; esac
  # shellcheck disable=SC2086
  PYTHONPATH=/tmp/site:$src timeout -k 20 "$cap" python3 "${cmd[@]}" $args "${tail[@]}" \
    > "$OUT/last.log" 2>&1 || { echo "failed ($?): $args"; tail -5 "$OUT/last.log"; }
  tail -1 "$OUT/last.log" | cut -c1-600
done
echo "done at $(( $(date +%s) - t0 ))s"
