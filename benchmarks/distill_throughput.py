"""Distillation throughput of `distill` on a full-size architecture with random weights.

    python benchmarks/distill_throughput.py --arch sd15 --batch-size 16 --steps 30 [--gradient-checkpointing]
    torchrun --nproc-per-node 2 benchmarks/distill_throughput.py --batch-size 16 --steps 30 --run-dir /tmp/tp2

Under torchrun each process takes cuda:LOCAL_RANK and the batch size is per GPU (global batch = batch x GPUs);
the run folder must then be one path all processes share (--run-dir). samples/s counts the global batch.

Prints a table: card, dtype, resolution, batch, samples/s (median over logging windows after warm-up),
peak GPU memory, and the time 1M samples (the paper's SD1.5 run) would take at that rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time

import torch

from dicecfg import DistillConfig, distill
from dicecfg.bench.archs import random_pipeline
from dicecfg.runs.folder import read_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", help="write the result row here")
    ap.add_argument("--run-dir", help="run folder (default: a temporary one; needed under torchrun)")
    a = ap.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    torch.cuda.set_device(device)
    pipe = random_pipeline(a.arch, dtype=torch.bfloat16, device=device)
    prompts = ["a photo of a cat on the beach", "a red car in the city at night", "a dog", "a blue car"] * 8
    cfg = DistillConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        teacher_pool=a.batch_size,
        teacher_steps=2,
        eval_pairs=a.batch_size,
        eval_every=0,
        log_every=5,
        checkpoint_every=10**9,
        gradient_checkpointing=a.gradient_checkpointing,
        progress=False,
    )
    torch.cuda.reset_peak_memory_stats()
    if world > 1 and not a.run_dir:
        raise SystemExit("under torchrun, pass --run-dir (one folder all processes share)")
    with tempfile.TemporaryDirectory() if not a.run_dir else contextlib.nullcontext(a.run_dir) as run:
        t0 = time.perf_counter()
        distill(pipe, prompts, config=cfg, output_dir=run)
        wall = time.perf_counter() - t0
        rates = [r["samples_per_s"] for r in read_stats(run) if "samples_per_s" in r][
            1:
        ]  # drop warm-up window
    if int(os.environ.get("RANK", "0")) != 0:
        return
    rate = statistics.median(rates)
    row = {
        "card": torch.cuda.get_device_name(),
        "arch": a.arch,
        "dtype": "bf16 weights + bf16 autocast",
        "resolution": pipe.unet.config.sample_size * pipe.vae_scale_factor,
        "batch": a.batch_size,
        "gpus": world,
        "global_batch": a.batch_size * world,
        "grad_ckpt": a.gradient_checkpointing,
        "samples_per_s": round(rate, 2),
        "s_per_step": round(a.batch_size * world / rate, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "hours_for_1M_samples": round(1e6 / rate / 3600, 2),
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(row))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(
        "| card | arch | res | GPUs | batch/GPU | grad ckpt | samples/s | s/step | peak GiB (rank 0) | h per 1M |"
    )
    print(
        f"| {row['card']} | {a.arch} | {row['resolution']} | {world} | {a.batch_size} | {a.gradient_checkpointing} "
        f"| {row['samples_per_s']} | {row['s_per_step']} | {row['peak_mem_gib']} | {row['hours_for_1M_samples']} |"
    )


if __name__ == "__main__":
    main()
