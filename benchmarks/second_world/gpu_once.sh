#!/usr/bin/env bash
# Train the shapes-fine mini model in ONE call of about 6 minutes (a short device budget): every stage on the
# GPU machine, side by side where they can be, each bounded by the call's clock. Whatever exists is packed into
# $OUT at once, so a call cut off at its limit still returns the finished stages.
#
#   LIMIT=340 bash benchmarks/second_world/gpu_once.sh      # repository root; wheels of diffusers etc. in .whl
#
# Order: the text encoder (GPU) beside the data (14 render processes); the VAE (GPU, from the one trained on a
# CPU on 2026-12-07) for VAE_S s once the data exists, beside the rest of the text encoder; the UNet until LIMIT s;
# assemble. A stage cut off at its deadline is finalised at the step it reached (a re-run with --*-steps 1 resumes
# its checkpoint and finishes it). The realism study and the quality bar are not run here (gpu_table.sh).
# To continue an earlier run (benchmarks/second_world/README.md, "Next"): TEXT_FROM=PIPELINE reuses its tokenizer
# and text encoder, UNET_INIT=PIPELINE starts the UNet from its weights, VAE_INIT=PIPELINE/vae its VAE.
# SPEED=1 times the UNet step first (unet_speed.py, while the CPUs render) and trains at the fastest batch and
# compile setting (kept in /tmp/unet_flags for gpu_table.sh); VAE_EARLY=N trains the VAE for VAE_S s on N renders
# of its own, beside the main render, instead of after it; VAE_FROM=FOLDER takes a trained VAE as it is (to go on
# with a UNet trained on its latents). UNET_FLAGS="--unet-batch 2048 --unet-lr 8e-4" sets the UNet's batch and LR
# without the probe (the 2026-12-07 probe: benchmarks/second_world/README.md).
set -uo pipefail
RUN=${RUN:-/tmp/fine-run}
LIMIT=${LIMIT:-340}  # seconds from the start at which the UNet stops (assembling and packing take ~20 s more)
TEXT_S=${TEXT_S:-200}  # the text encoder's deadline (s from the start)
VAE_S=${VAE_S:-120}  # seconds of VAE training once the data exists (rendering 200,000 took 171 s on 14 processes)
t0=$(date +%s)
since() { echo $(( $(date +%s) - t0 )); }
mins_until() { python3 -c "print(max(0.1, ($1 - ($(date +%s) - $t0)) / 60))"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
T="python3 -m dicecfg.minimodel.train"
DEV=${DEV:-cuda}
C="--out $RUN --world shapes-fine --preset fine --no-progress ${EXTRA:-}"  # EXTRA: a CPU dry run's sizes
TXT="--text-steps ${TEXT_STEPS:-2000} --text-captions ${TEXT_CAPTIONS:-100000}"
[ -n "${TEXT_FROM:-}" ] && TXT="--text-from $TEXT_FROM"  # a pipeline whose tokenizer and text encoder to reuse
VAE="--vae-init ${VAE_INIT:-benchmarks/second_world/results/vae_cpu_step1891}"  # trained on a CPU (README)
UNET="${UNET_INIT:+--unet-init $UNET_INIT}"  # a pipeline whose UNet to start from (its EMA weights)
UNET_FLAGS=${UNET_FLAGS:-}
L=/tmp/logs
mkdir -p "$OUT" $L
pack() {  # logs and stats so far (every stage calls it, so a cut-off call keeps what was done)
  cp "$RUN"/stats.jsonl "$RUN"/run_*.json $L/ 2>/dev/null
  tar -C /tmp -cf "$OUT/logs.tar" logs
}
$T text $C $TXT --device $DEV --max-minutes "$(mins_until "$TEXT_S")" > $L/text.log 2>&1 &
TEXT=$!
PROBE=
if [ "${SPEED:-0}" = 1 ]; then  # the UNet step's speed by batch and compile, while the CPUs render (unet_speed.py)
  timeout ${PROBE_S:-110} python3 benchmarks/second_world/unet_speed.py --preset fine --json $L/unet_speed.json --best ${PROBE_ARGS:-} \
    > $L/unet_speed.log 2>&1 &
  PROBE=$!
fi
VAE_TRAIN="--vae-steps ${VAE_STEPS:-3000}"
if [ "${VAE_EARLY:-0}" -gt 0 ]; then
  # the VAE on a small set of its own (VAE_EARLY renders) in $RUN-vae, trained beside the main render; the run
  # then reuses it (--vae-from: copied, its PSNR measured again on the run's eval renders)
  VR=$RUN-vae
  $T data --out $VR --world shapes-fine --preset fine --no-progress ${EXTRA:-} --workers 14 --n-images "$VAE_EARLY" \
    --max-minutes 2 > $L/vae_data.log 2>&1
  echo "vae data done at $(since) s"
  $T data $C --workers 13 --n-images "${N_IMAGES:-200000}" --max-minutes 3 > $L/data.log 2>&1 &
  DJOB=$!
  [ -n "$PROBE" ] && wait $PROBE  # the GPU to itself while it times the step (the renders are on the CPUs)
  vae_until=$(( $(since) + VAE_S ))
  $T vae --out $VR --world shapes-fine --preset fine --no-progress ${EXTRA:-} $VAE $VAE_TRAIN --device $DEV \
    --max-minutes "$(mins_until "$vae_until")" > $L/vae.log 2>&1
  wait $DJOB
  echo "data done at $(since) s"
  [ -d "$VR/vae/final" ] || $T vae --out $VR --world shapes-fine --preset fine --no-progress ${EXTRA:-} $VAE --device $DEV \
    --vae-steps 1 >> $L/vae.log 2>&1
  cp $VR/stats.jsonl $L/vae_run_stats.jsonl 2>/dev/null
  $T vae $C --vae-from $VR/vae/final --device $DEV >> $L/vae.log 2>&1
elif [ -n "${VAE_FROM:-}" ]; then  # a trained VAE as it is (a UNet continued on its latents needs the same one)
  $T data $C --workers 14 --n-images "${N_IMAGES:-200000}" --max-minutes 3 > $L/data.log 2>&1
  echo "data done at $(since) s"
  $T vae $C --vae-from "$VAE_FROM" --device $DEV > $L/vae.log 2>&1
else
  $T data $C --workers 14 --n-images "${N_IMAGES:-200000}" --max-minutes 3 > $L/data.log 2>&1
  echo "data done at $(since) s"
  vae_until=$(( $(since) + VAE_S ))
  $T vae $C $VAE $VAE_TRAIN --device $DEV --max-minutes "$(mins_until "$vae_until")" > $L/vae.log 2>&1
  [ -d "$RUN/vae/final" ] || $T vae $C $VAE --device $DEV --vae-steps 1 >> $L/vae.log 2>&1
fi
echo "vae done at $(since) s"; grep -E "PSNR|Error" $L/vae.log | tail -2
if [ -n "$PROBE" ]; then  # the fastest variant's batch and compile flag; the LR scales with sqrt(batch / 512)
  wait $PROBE; cat $L/unet_speed.log | grep -v "^\[" | tail -8
  read -r B CMP < <(cd benchmarks/second_world && python3 -c "import json, unet_speed as u
print(*u.best(json.load(open('$L/unet_speed.json'))))")
  if [[ "$B" =~ ^[0-9]+$ ]]; then
    UNET_FLAGS="--unet-batch $B --unet-lr $(python3 -c "print(4e-4 * ($B / 512) ** 0.5)")"
    [ "$CMP" = 1 ] && UNET_FLAGS="$UNET_FLAGS --unet-compile"
    echo "$UNET_FLAGS" > /tmp/unet_flags; echo "UNet flags: $UNET_FLAGS"
  fi
fi
UNET="$UNET ${UNET_FLAGS:-$(cat /tmp/unet_flags 2>/dev/null)}"
[ -n "$UNET_FLAGS" ] && echo "$UNET_FLAGS" > /tmp/unet_flags  # gpu_table.sh's UNET_S goes on with them
wait $TEXT
[ -d "$RUN/text/final" ] || $T text $C $TXT --text-steps 1 --device $DEV >> $L/text.log 2>&1
echo "text done at $(since) s"; grep -E "held-out|Error" $L/text.log | tail -2
tar -C "$RUN" -cf "$OUT/text_vae.tar" text/final vae/final tokenizer; pack
python3 benchmarks/second_world/recon.py --vae "$RUN/vae/final" --n 512 --device $DEV --json $L/recon.json > $L/recon.md 2>&1 &
if [ "$(since)" -lt $((LIMIT - 45)) ]; then  # a UNet run shorter than ~45 s is not worth its start
  $T unet $C $UNET --device $DEV --ema-decay "${EMA:-0.999}" --max-minutes "$(mins_until "$LIMIT")" > $L/unet.log 2>&1 \
    || { [[ "$UNET" == *--unet-compile* ]] && echo "unet failed compiled at $(since) s: again eager" \
      && sed -i 's/--unet-compile//' /tmp/unet_flags 2>/dev/null; $T unet $C ${UNET//--unet-compile/} --device $DEV \
      --ema-decay "${EMA:-0.999}" --max-minutes "$(mins_until "$LIMIT")" >> $L/unet.log 2>&1; }
  echo "unet stopped at $(since) s"; grep -E "Error|Traceback" $L/unet.log | tail -2
  $T assemble $C --device cpu > $L/assemble.log 2>&1 && tar -C "$RUN" -cf - pipeline | split -b 15m - "$OUT/pipeline.tar.part_"
  echo "assembled at $(since) s"; pack
  # in parts under the 16 MB limit (cat the parts | tar -x); the UNet's checkpoint (weights, EMA, AdamW
  # state) for --unet-init or a resume later
  # (PACK_CKPT=0 keeps it on the machine only: with the pipeline's parts it can pass the limit of 8 files)
  [ "${PACK_CKPT:-1}" = 1 ] && tar -C "$RUN" -cf - unet/ckpt.safetensors | split -b 15m - "$OUT/unet_ckpt.tar.part_"
else
  echo "no UNet: $(since) s of $LIMIT gone (text_vae.tar is reusable: --text-from / --vae-from)"
fi
python3 - "$RUN" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1]) / "stats.jsonl").read_text().splitlines() if l.strip()]
for r in rows:
    if r.get("event") in ("done", "end") or (r.get("step", 0) % 500 == 0 and "loss" in r):
        print({k: r[k] for k in r if k in ("stage", "event", "step", "loss", "psnr_eval", "heldout_exact", "elapsed_s", "it_s")})
PY
wait; pack; cat $L/recon.md
echo "done at $(since) s"
