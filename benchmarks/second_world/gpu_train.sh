#!/usr/bin/env bash
# Train the shapes-fine mini model on one lent GPU, in two calls of under 10 minutes on one warm machine
# (repository root; wheels of diffusers and importlib_metadata in .whl; the run folder stays on the machine).
#
#   CALL=1 bash benchmarks/second_world/gpu_train.sh   # data || text encoder; the VAE (from the first model's);
#                                                      # the UNet until the call's time is up
#   CALL=0 LIMIT=300 ...: both in one call (a short device budget)
#   CALL=2 LIMIT=330 bash benchmarks/second_world/gpu_train.sh  # the UNet until LIMIT; assemble; the realism
#                                                      # study of both worlds
#
# Every stage resumes when run again with the same RUN. What comes back in $OUT: logs.tar (the logs, stats.jsonl,
# the stages' run_*.json), the text encoder and VAE (so a lost machine costs only the UNet), the oracle on the VAE's
# reconstructions (recon.md / recon.json in logs.tar: the ceiling this VAE leaves the model), and after CALL=2 the
# assembled fp16 pipeline (pipeline.tar), the study's JSON (in logs.tar) and a few of its images.
set -uo pipefail
RUN=${RUN:-/tmp/fine-run}
CALL=${CALL:?CALL=1 or CALL=2}
LIMIT=${LIMIT:-565}  # seconds of this call before the UNet stops (CALL=2: leave EVAL_S + 30 for the rest)
EVAL_S=${EVAL_S:-240}  # CALL=2: the realism study of both worlds (benchmarks/second_world/realism.py)
t0=$(date +%s)
left_min() { python3 -c "print(max(0.5, ($LIMIT - ($(date +%s) - $t0)) / 60))"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
T="python3 -m dicecfg.minimodel.train"
C="--out $RUN --world shapes-fine --preset fine --no-progress"
L=/tmp/logs
mkdir -p "$OUT" $L
if [ "$CALL" != 2 ]; then  # 1, or 0: everything in one call (a short budget)
  $T data $C --workers 14 --max-minutes 4 > "$L/data.log" 2>&1 &
  DATA=$!
  $T text $C --device cuda --max-minutes 4 > "$L/text.log" 2>&1
  wait $DATA
  echo "data + text done at $(( $(date +%s) - t0 )) s"; grep -E "held-out|Error" "$L/text.log" | tail -3
  $T vae $C --device cuda --vae-init src/dicecfg/assets/mini-model/vae --vae-steps 3000 --max-minutes "${VAE_MIN:-3}" > "$L/vae.log" 2>&1
  echo "vae done at $(( $(date +%s) - t0 )) s"; grep -E "PSNR|Error" "$L/vae.log" | tail -3
  python3 benchmarks/second_world/recon.py --vae "$RUN/vae/final" --n 512 --json "$L/recon.json" | tee "$L/recon.md"
fi
$T unet $C --device cuda --max-minutes "$(left_min)" > "$L/unet_call$CALL.log" 2>&1  # LIMIT leaves room for CALL 2's study
echo "unet stopped at $(( $(date +%s) - t0 )) s"; grep -E "Error|Traceback" "$L/unet_call$CALL.log" | tail -3
if [ "$CALL" != 1 ]; then
  $T assemble $C --device cpu > "$L/assemble.log" 2>&1 && tar -C "$RUN" -cf "$OUT/pipeline.tar" pipeline
  echo "assembled at $(( $(date +%s) - t0 )) s"
  S=benchmarks/second_world/realism.py
  [ "$EVAL_S" -gt 0 ] || { echo "EVAL_S=0: no study"; S=""; }
  [ -n "$S" ] && [ -n "${SHAPES:-}" ] &&  # SHAPES=1: the first world's shipped model too, in parallel
    timeout $EVAL_S python3 $S --model mini --world shapes --n 512 --json "$L/realism_shapes.json" > "$L/realism_shapes.log" 2>&1 &
  [ -n "$S" ] && timeout $EVAL_S python3 $S --model "$RUN/pipeline" --world shapes-fine --n 512 --json "$L/realism_fine.json" \
    --images "$OUT/realism_fine_images.npz" > "$L/realism_fine.log" 2>&1
  wait
  [ -n "$S" ] && tail -n 30 "$L"/realism_fine.log; [ -n "${SHAPES:-}" ] && tail -n 3 "$L"/realism_shapes.log
fi
cp "$RUN"/stats.jsonl "$RUN"/run_*.json $L/ 2>/dev/null
tar -C /tmp -cf "$OUT/logs.tar" logs
tar -C "$RUN" -cf "$OUT/text_vae.tar" text/final vae/final tokenizer 2>/dev/null
python3 - "$RUN" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1]) / "stats.jsonl").read_text().splitlines() if l.strip()]
for r in rows:
    if r.get("event") in ("done", "end") or (r.get("stage") == "unet" and r.get("step", 0) % 1000 == 0 and "loss" in r):
        print({k: r[k] for k in r if k in ("stage", "event", "step", "loss", "psnr_eval", "heldout_exact", "elapsed_s", "it_s")})
PY
echo "call $CALL done at $(( $(date +%s) - t0 )) s"
