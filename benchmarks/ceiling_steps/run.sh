#!/usr/bin/env bash
# The ceiling of step-dependent embedding edits on one model, in one call on one lent GPU (run from the
# repository root; wheels in .whl where the machine lacks a package). Every layout of `dice ceiling` runs as its
# own process at once, on the same prompts and seeds: the static edit, one per block of 5 steps, one per step,
# and edits only on the first 5 of 20 steps or the middle band. Each run's report (ceiling.json, ceiling.md,
# grid.png, ceiling_run.json; not its edits, which are large) is packed into $OUT/ceiling_<name>.tgz.
#
#   bash benchmarks/ceiling_steps/run.sh mini             # the shapes world's shipped model
#   bash benchmarks/ceiling_steps/run.sh mini-fine        # the shapes-fine model (shipped)
#   bash benchmarks/ceiling_steps/run.sh path/to/pipeline # a trained shapes-fine pipeline folder (its world's
#                                                         # held-out prompts are written to a file first)
# Knobs (environment): LIMIT (held-out prompts, 256), STEPS (Adam steps, 400), DRAWS (8), PPB (prompts per batch,
# 128), LAYOUTS (which of the names below), SECS (each run's time limit, 540).
set -uo pipefail
MODEL=${1:-mini}
LIMIT=${LIMIT:-256}
STEPS=${STEPS:-400}
DRAWS=${DRAWS:-8}
PPB=${PPB:-128}
SECS=${SECS:-540}
LAYOUTS=${LAYOUTS:-static blocks4 steps static-first5 steps-first5 static-band}
declare -A FLAGS=(
  [static]="--edits static"
  [blocks4]="--edits blocks:4"
  [steps]="--edits steps"
  [static-first5]="--edits static --interval 0,0.25"
  [steps-first5]="--edits steps --interval 0,0.25"
  [static-band]="--edits static --interval 0.15,0.9"
)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
git log -1 --format='commit %H' 2>/dev/null
W=/tmp/ceiling_steps
mkdir -p "$W" "$OUT"
name=$(basename "$MODEL")
PROMPTS=()
case "$MODEL" in
  mini|mini-fine) PROMPTS=(--limit "$LIMIT") ;;
  *)  # a model folder: its world's held-out prompts, in order (seeds: --seed 0, 1, ...)
    python3 -c "
import sys
from dicecfg.metrics.world import world_of_model
from dicecfg.world.worlds import get_world
items = get_world(world_of_model(sys.argv[1])).heldout_set(int(sys.argv[2]))
open(sys.argv[3], 'w').write(''.join(it.prompt + '\n' for it in items))" "$MODEL" "$LIMIT" "$W/prompts.txt" || exit 1
    PROMPTS=(--prompts "$W/prompts.txt") ;;
esac
t0=$(date +%s)
declare -A PID
for layout in $LAYOUTS; do
  cmd=(python3 -m dicecfg.cli -q ceiling --model "$MODEL" "${PROMPTS[@]}" --steps "$STEPS" --draws "$DRAWS"
       --prompts-per-batch "$PPB" ${FLAGS[$layout]} --out "$W/$name/$layout")
  echo "${cmd[*]}" > "$W/$layout.cmd"
  timeout "$SECS" "${cmd[@]}" > "$W/$layout.log" 2>&1 &
  PID[$layout]=$!
done
for layout in $LAYOUTS; do
  wait "${PID[$layout]}"
  rc=$?
  [ $rc -eq 124 ] && echo "cut by its time limit ($SECS s): no report" >> "$W/$layout.log"
  echo "exit $rc at $(( $(date +%s) - t0 )) s" >> "$W/$layout.log"
done
for layout in $LAYOUTS; do
  echo "## $layout: $(cat "$W/$layout.cmd")"
  tail -n 25 "$W/$layout.log"
  mkdir -p "$W/$name/$layout" && cp "$W/$layout.cmd" "$W/$layout.log" "$W/$name/$layout/"
done
(cd "$W/$name" && tar czf "$OUT/ceiling_$name.tgz" --exclude=edits .)
ls -la "$OUT"
