#!/usr/bin/env bash
# The realism study of both worlds in one call on one lent GPU (repository root; wheels in .whl):
# the shapes world's shipped model and the shapes-fine model, a process each (the oracles run on the CPU).
#
#   FINE=path/to/shapes-fine/pipeline bash benchmarks/second_world/gpu_eval.sh
set -uo pipefail
FINE=${FINE:-mini-fine}
N=${N:-512}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
S=benchmarks/second_world/realism.py
mkdir -p "$OUT"
python3 $S --model mini --world shapes --n "$N" --json "$OUT/realism_shapes.json" > "$OUT/realism_shapes.log" 2>&1 &
python3 $S --model "$FINE" --world shapes-fine --n "$N" --json "$OUT/realism_fine.json" > "$OUT/realism_fine.log" 2>&1
wait
tail -n 40 "$OUT"/realism_*.log
