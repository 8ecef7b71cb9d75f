#!/usr/bin/env bash
# After gpu_once.sh, on the same warm machine (its run folder stays there): the realism study of both worlds, the
# mini-fine sharpener, `dice tune` and the evidence table's DICE rows, in one call of under 10 minutes; a call cut
# off resumes in the next (every piece skips or resumes what it already has).
#
#   LIMIT=560 bash benchmarks/second_world/gpu_table.sh
#
# Side by side until LIMIT s: the realism study of the first world (with the shipped sharpener's DICE rows), that
# of the second, and the training of the mini-fine sharpener (SHARP_STEPS steps, stopped RESERVE s before LIMIT at
# a checkpoint). Then `dice tune` on the second world's validation set (never the held-out one), and the DICE rows
# added beside the peers' on the held-out prompts (realism.py reuses the rows it already has), and the negative-
# prompt probe of the second world (benchmarks/negative_prompts, a negated pattern). UNET_S=S first
# trains the UNet S s further (from its checkpoint) and assembles a new pipeline; SHARPENER=0 runs the realism
# studies alone; SHAPES=0 leaves out the first world's study; TEACHER_W sets the sharpener's teacher w (5; use the
# model's w*). TIMED=1 trains a second sharpener beside the first, the same recipe with `--time-embed sinusoidal`
# (the edit a function of the timestep, issue 30), in $W/sharpener-t, and gives it the same tune, DICE rows and
# probe; T_WEIGHTINGS="uniform noisy steps" trains one such sharpener per `--t-weighting` (sharpener-t for uniform,
# sharpener-t-noisy, sharpener-t-steps), side by side. The UNet keeps the batch and compile setting gpu_once.sh
# chose (/tmp/unet_flags). The sharpeners and every log are packed into $OUT; a sharpener cut before its last step
# is packed as `$OUT/<name>_ckpt.tar` (its checkpoint: weights, AdamW state, step; not the teacher pool, which is
# made again). RESTORE=DIR (a previous call's $OUT, copied under the repository and carried) puts its logs (the
# study's rows, the tunes' rows) and its sharpeners, finished or cut, back before anything runs: a later call on
# another machine goes on where that one stopped.
#
# On a fresh machine (no gpu_once.sh run): PIPE=src/dicecfg/assets/mini-fine-model (the shipped model) and no UNET_S;
# a sharpener folder already holding model.safetensors (e.g. a copy of the shipped one in $W/sharpener) is not
# trained again but tuned, probed and sampled beside the new one:
#   mkdir -p /tmp/ft && cp -r src/dicecfg/assets/mini-fine-sharpener /tmp/ft/sharpener
#   PIPE=src/dicecfg/assets/mini-fine-model W=/tmp/ft TIMED=1 SHAPES=0 bash benchmarks/second_world/gpu_table.sh
#
# The sharpener: today's recipe (docs/recipes.md: `--recipe dicecfg`, the block network, teacher pool, L1, w=5,
# negative prompts with probability 0.25), on 40,000 training captions of the second world (export_prompts seed
# 21; negatives seed 22), 2,000 steps of batch 256. Inner width 192 rather than the first world's 256 (543,616
# parameters, 1.09 MB in fp16): the package's 40 MiB of weights leave 1.54 MB beside both models and the first
# sharpener, and the 256-wide one needs 1.84 MB.
set -uo pipefail
RUN=${RUN:-/tmp/fine-run}    # gpu_once.sh's run folder
PIPE=${PIPE:-$RUN/pipeline}  # the shapes-fine pipeline every stage uses
W=${W:-/tmp/fine-table}      # this script's work folder
LIMIT=${LIMIT:-560}          # seconds from the start by which everything has stopped (packing takes ~10 s more)
UNET_S=${UNET_S:-0}          # seconds of UNet training (from gpu_once.sh's checkpoint) before everything else
RESERVE=${RESERVE:-150}      # seconds kept after the sharpener's training for tune and the DICE rows
SHARPENER=${SHARPENER:-1}    # 0: the realism studies alone (no sharpener, tune, DICE rows or probe)
DEV=${DEV:-cuda}
N=${N:-512}
t0=$(date +%s)
since() { echo $(( $(date +%s) - t0 )); }
left() {  # seconds until LIMIT less $1, at least 1 (`timeout 0` would mean no limit at all)
  local s=$(( LIMIT - $(date +%s) + t0 - ${1:-0} ))
  echo $(( s > 0 ? s : 1 ))
}
if [ "$UNET_S" -gt 0 ] && [ ! -f "$RUN/unet/ckpt.safetensors" ]; then
  echo "no $RUN/unet/ckpt.safetensors: UNET_S needs gpu_once.sh's run folder on this machine (run it first)"
  exit 3
fi
if [ "$UNET_S" -eq 0 ] && [ ! -f "$PIPE/model_index.json" ]; then
  echo "no pipeline at $PIPE: run gpu_once.sh on this machine first, or give PIPE=src/dicecfg/assets/mini-fine-model"
  exit 3
fi
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null
L=$W/logs
mkdir -p "$L" "$OUT"
SHS=(sharpener)  # the sharpeners of this call: TIMED=1 adds sharpener-t (uniform t) and one per other weighting
if [ "${TIMED:-0}" = 1 ]; then
  for tw in ${T_WEIGHTINGS:-uniform}; do
    [ "$tw" = uniform ] && SHS+=(sharpener-t) || SHS+=("sharpener-t-$tw")
  done
fi
if [ -n "${RESTORE:-}" ]; then  # a previous call's $OUT: its logs (study rows, tune rows) and sharpeners, cut or not
  [ -f "$RESTORE/logs.tar" ] && [ -z "$(ls -A "$L")" ] && tar -C "$W" -xf "$RESTORE/logs.tar" && echo "restored logs"
  for f in "$RESTORE"/sharpener*.tar; do
    [ -f "$f" ] || continue
    s=$(basename "$f" .tar)
    s=${s%_ckpt}
    [ -d "$W/$s" ] || { tar -C "$W" -xf "$f" && echo "restored $s from $f"; }
  done
fi
S=benchmarks/second_world/realism.py
T="python3 -m dicecfg.minimodel.train"
C="--out $RUN --world shapes-fine --preset fine --no-progress ${EXTRA:-}"
TRAIN=(python3 -m dicecfg.cli -q train --model "$PIPE" --prompts "$W/prompts.txt"
  --negative-prompts "$W/negatives.txt" --negative-prob 0.25 --recipe dicecfg --inner-dim "${INNER:-192}" --heads 4
  --lr 5e-4 --guidance-scale "${TEACHER_W:-5}" --loss l1 --xt-source teacher --teacher-pool "${POOL:-16384}"
  --batch-size "${SHARP_BATCH:-256}" --steps "${SHARP_STEPS:-2000}" --eval-pairs "${EVAL_PAIRS:-256}" --eval-every 250
  --checkpoint-every "${CKPT_EVERY:-250}" --log-every 50 --no-compile --device "$DEV")
realism() {  # WORLD MODEL NAME [--sharpener S]...: bounded by the call's clock; a cut-off study resumes later
  local world=$1 model=$2 name=$3
  shift 3
  timeout -s TERM "$(left)" python3 $S --world "$world" ${model:+--model "$model"} --n "$N" --device "$DEV" \
    --json "$L/realism_$name.json" --images "$L/realism_${name}_images.npz" "$@" >> "$L/realism_$name.log" 2>&1
  echo "realism $name: exit $? at $(since) s"
}
pack() {
  cp "$RUN"/stats.jsonl "$L/fine_run_stats.jsonl" 2> /dev/null
  for s in "${SHS[@]}"; do cp "$W/$s/stats.jsonl" "$L/${s}_stats.jsonl" 2> /dev/null; done
  tar -C "$W" -cf "$OUT/logs.tar" logs
}
if [ "$UNET_S" -gt 0 ]; then  # the UNet further from its checkpoint (weights, EMA, AdamW), then a new pipeline
  $T unet $C $(cat /tmp/unet_flags 2> /dev/null) --device "$DEV" --ema-decay "${EMA:-0.999}" \
    --max-minutes "$(python3 -c "print($UNET_S / 60)")" > "$L/unet_more.log" 2>&1
  echo "unet stopped at $(since) s"; grep -E "Error|Traceback" "$L/unet_more.log" | tail -2
  $T assemble $C --device cpu > "$L/assemble.log" 2>&1 || { echo "assemble failed"; tail "$L/assemble.log"; exit 1; }
  tar -C "$RUN" -cf - pipeline | split -b 15m - "$OUT/pipeline.tar.part_"
  echo "assembled at $(since) s"
fi
[ "${SHAPES:-1}" = 1 ] && realism shapes "${SHAPES_MODEL:-}" shapes --sharpener "${SHAPES_SHARPENER:-mini}" &
realism shapes-fine "$PIPE" fine &
FINE=$!
if [ "$SHARPENER" = 0 ]; then
  wait; pack; for f in "$L"/realism_*.log; do echo "== $f"; grep -E "nfe|w\* =|rule" "$f" | tail -n 30; done
  echo "done at $(since) s (no sharpener)"; exit 0
fi
[ -f "$W/negatives.txt" ] || python3 -c "
import sys
from dicecfg.world.data import export_prompts
export_prompts(sys.argv[1], 40000, seed=21, world='shapes-fine')
export_prompts(sys.argv[2], 20000, seed=22, world='shapes-fine')" "$W/prompts.txt" "$W/negatives.txt" || exit 1
PIDS=()
for s in "${SHS[@]}"; do  # side by side, cut RESERVE s before LIMIT (a later call resumes them)
  [ -f "$W/$s/model.safetensors" ] && continue
  extra=()
  case "$s" in
    sharpener-t) extra=(--time-embed sinusoidal) ;;
    sharpener-t-*) extra=(--time-embed sinusoidal --t-weighting "${s#sharpener-t-}") ;;
  esac
  ( timeout -s TERM "$(left "$RESERVE")" "${TRAIN[@]}" "${extra[@]}" --out "$W/$s" >> "$L/$s.log" 2>&1
    echo "$s: exit $? at $(since) s" ) &
  PIDS+=($!)
done
[ ${#PIDS[@]} -gt 0 ] && wait "${PIDS[@]}"
DONE=(); PIDS=()
for s in "${SHS[@]}"; do  # each finished sharpener tuned on validation prompts, side by side
  [ -f "$W/$s/model.safetensors" ] || { echo "$s did not finish: no tune, no DICE rows"; continue; }
  DONE+=(--sharpener "$W/$s")
  [ -f "$L/tune_$s/tune.json" ] && continue
  ( timeout -s TERM "$(left 30)" python3 -m dicecfg.cli -q tune --model "$PIPE" --sharpener "$W/$s" \
      --stops 0.05 0.1 0.15 0.25 0.5 1 --batch-size 256 --limit "$N" --device "$DEV" --out "$L/tune_$s" \
      > "$L/tune_$s.log" 2>&1
    echo "tune $s: exit $? at $(since) s" ) &
  PIDS+=($!)
done
[ ${#PIDS[@]} -gt 0 ] && wait "${PIDS[@]}"
for s in "${SHS[@]}"; do
  [ -f "$W/$s/model.safetensors" ] || continue
  tail -n 25 "$L/tune_$s.log" 2> /dev/null
  timeout -s TERM "$(left)" python3 benchmarks/negative_prompts/negative_prompts.py --world shapes-fine \
    --model "$PIPE" --sharpener "$W/$s" --device "$DEV" > "$L/negatives_fine_$s.log" 2>&1 &
done
wait $FINE  # the peers' rows first (bounded by the clock), then the DICE rows beside them
[ ${#DONE[@]} -gt 0 ] && realism shapes-fine "$PIPE" fine "${DONE[@]}"
wait
for s in "${SHS[@]}"; do  # finished sharpeners (config.json records what tune chose); cut ones as checkpoints
  if [ -f "$W/$s/model.safetensors" ]; then
    tar -C "$W" -cf "$OUT/$s.tar" --exclude='*teacher_pool*' --exclude='*checkpoint*' "$s"
  elif [ -d "$W/$s" ]; then
    tar -C "$W" -cf "$OUT/${s}_ckpt.tar" --exclude='*teacher_pool*' --exclude=run.lock "$s" && echo "$s: cut; packed ${s}_ckpt.tar"
  fi
done
pack
for f in "$L"/realism_*.log; do echo "== $f"; grep -E "nfe|w\* =|reused|criteria|rule" "$f" | tail -n 30; done
for s in "${SHS[@]}"; do tail -n 3 "$L/$s.log" 2> /dev/null; grep "|" "$L/negatives_fine_$s.log" 2> /dev/null; done
ls -la "$OUT"
echo "done at $(since) s"
