#!/usr/bin/env bash
# Multi-GPU distillation on one host with 2 GPUs: distillation throughput on 1 and 2 GPUs (full-size SD1.5, random weights, same
# per-GPU batch), then loss parity on the shipped mini model (1 GPU x batch 128 vs 2 GPUs x batch 64).
#
#   [SKIP_THROUGHPUT=1] benchmarks/multi_gpu/gpu.sh WORK_DIR [STEPS]
set -euo pipefail
W=${1:?work dir}
STEPS=${2:-800}
PY=${PYTHON:-python3}
mkdir -p "$W"
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
CUDA_VISIBLE_DEVICES=0 $PY benchmarks/distill_throughput/distill_throughput.py --batch-size 16 --steps 60 --json "$W/throughput.jsonl"
rm -rf "$W/tp2"
$PY -m torch.distributed.run --nproc-per-node 2 benchmarks/distill_throughput/distill_throughput.py --batch-size 16 --steps 60 \
  --run-dir "$W/tp2" --json "$W/throughput.jsonl"
fi
[ -f "$W/prompts.txt" ] || $PY -c "import sys; from dicecfg.world.data import export_prompts as e
e(sys.argv[1], 20000, seed=21)" "$W/prompts.txt"
common=(--prompts "$W/prompts.txt" --steps "$STEPS" --lr 5e-4 --guidance-scale 5 --loss l1 --xt-source teacher
  --teacher-pool 4096 --eval-pairs 256 --eval-every 100 --checkpoint-every 200 --log-every 50)
CUDA_VISIBLE_DEVICES=0 $PY -m dicecfg.cli -q train "${common[@]}" --batch-size 128 --out "$W/gpu1"
$PY -m dicecfg.cli -q train "${common[@]}" --gpus 2 --batch-size 64 --out "$W/gpu2"
$PY - "$W" <<'PY'
import json, sys, pathlib
from safetensors.torch import load_file
w = pathlib.Path(sys.argv[1])
ev = {}
for r in ("gpu1", "gpu2"):
    rows = [json.loads(l) for l in (w / r / "stats.jsonl").read_text().splitlines() if l.strip()]
    ev[r] = {x["step"]: x["eval_loss"] for x in rows if "eval_loss" in x}
    sps = [x["samples_per_s"] for x in rows if "samples_per_s" in x]
    print(r, "samples/s (median):", round(sorted(sps)[len(sps) // 2]))
print("| step | held-out loss, 1 GPU x 128 | 2 GPUs x 64 | difference |\n|---|---|---|---|")
for s in sorted(ev["gpu1"]):
    a, b = ev["gpu1"][s], ev["gpu2"].get(s)
    print(f"| {s} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
A, B = load_file(str(w / "gpu1" / "model.safetensors")), load_file(str(w / "gpu2" / "model.safetensors"))
d = max((A[k].float() - B[k].float()).abs().max().item() for k in A)
n = max(A[k].float().abs().max().item() for k in A)
print(f"final weights: max |1 GPU - 2 GPUs| = {d:.3g} (largest weight {n:.3g})")
PY
