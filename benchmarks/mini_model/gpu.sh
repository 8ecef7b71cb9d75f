#!/usr/bin/env bash
# Train the shipped mini model on one GPU: data -> text -> vae -> unet -> assemble -> eval, then print a table.
#
#   benchmarks/mini_model/gpu.sh OUT_DIR [STAGE ...]      (default: all stages in order)
#
# Assumes PYTHONPATH includes src/ and diffusers + transformers are installed. Every stage resumes when
# re-run with the same OUT_DIR, and stops with a checkpoint after MAX_MINUTES (default 8), so a stage
# that did not finish is simply run again in the next command. The shipped folder is OUT_DIR/pipeline.
set -euo pipefail
OUT=${1:?usage: benchmarks/mini_model/gpu.sh OUT_DIR [data|text|vae|unet|assemble|eval ...]}
shift
STAGES=${*:-data text vae unet assemble eval}
PY=${PYTHON:-python}
MAX_MINUTES=${MAX_MINUTES:-8}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}  # more options for every stage, e.g. EXTRA="--unet-batch 256"
# VAE_FROM=DIR reuses a trained AutoencoderKL folder (e.g. the shipped one) instead of training the VAE
train() { $PY -m dicecfg.minimodel.train "$@" --out "$OUT" --no-progress $EXTRA; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for stage in $STAGES; do
  echo "=== $stage ($(date -u +%H:%M:%S))"
  case $stage in
    data) train data --workers "$(nproc)" --max-minutes "$MAX_MINUTES" ;;
    text | unet) train "$stage" --device "$DEVICE" --max-minutes "$MAX_MINUTES" ;;
    vae) train vae --device "$DEVICE" --max-minutes "$MAX_MINUTES" ${VAE_FROM:+--vae-from "$VAE_FROM"} ;;
    assemble) train assemble --device cpu ;;
    eval) train eval --device "$DEVICE" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done

$PY - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in (out / "stats.jsonl").read_text().splitlines() if l.strip()]
last = lambda s, e=None: next((r for r in reversed(rows) if r.get("stage") == s and (e is None or r.get("event") == e)), {})
cards = sorted({r["card"] for r in rows if r.get("event") == "start" and r["stage"] in ("text", "vae", "unet")})
shards = [r for r in rows if r.get("stage") == "data" and "shard" in r]
vae, unet, ev = last("vae", "done"), last("unet", "end"), last("eval", "done")
text = last("text", "done")
print(f"\nmini model run {out}  card: {', '.join(cards) or 'n/a'}")
print(f"{'stage':9} {'what':38} value")
print(f"{'data':9} {'train renders / seconds':38} {sum(r['n'] for r in shards if r['shard'] != 'eval')} / {sum(r['seconds'] for r in shards):.0f}")
print(f"{'text':9} {'steps / loss / held-out exact / min':38} {text.get('step')} / {text.get('loss')} / {text.get('heldout_exact')} / {text.get('elapsed_s', 0) / 60:.1f}")
print(f"{'vae':9} {'steps / PSNR dB / scaling / min':38} {vae.get('step')} / {vae.get('psnr_eval', float('nan')):.2f} / {vae.get('scaling_factor', float('nan')):.3f} / {vae.get('elapsed_s', 0) / 60:.1f}")
vl = next((r for r in reversed(rows) if r.get("stage") == "vae" and "it_s" in r), {})
print(f"{'vae':9} {'last logged step / loss':38} {vl.get('step')} / {vl.get('loss')}")
print(f"{'unet':9} {'steps / loss / min (all runs)':38} {unet.get('step')} / {unet.get('loss')} / {unet.get('elapsed_s', 0) / 60:.1f}")
its = [r["it_s"] for r in rows if r.get("stage") == "unet" and "it_s" in r]
print(f"{'unet':9} {'it/s (last logged)':38} {its[-1] if its else 'n/a'}")
w = out / "pipeline"
if w.exists():
    sizes = {str(p.relative_to(w)): p.stat().st_size for p in w.rglob("*.safetensors")}
    print(f"{'pipeline':9} {'weight bytes (total, largest)':38} {sum(sizes.values())}, {max(sizes.values())}")
if ev:
    print(f"{'eval':9} {'oracle all: cfg w=%g / unguided / gap' % ev['guidance']:38} {ev['cfg']:.3f} / {ev['unguided']:.3f} / {ev['gap']:+.3f}  (n={ev['n']}, {ev['steps']} steps)")
    print(f"{'eval':9} {'oracle relation: cfg / unguided':38} {ev.get('cfg_relation', float('nan')):.3f} / {ev.get('unguided_relation', float('nan')):.3f}")
PY
