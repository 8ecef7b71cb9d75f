"""Distillation throughput of `distill` on a full-size architecture with random weights.

    python benchmarks/distill_throughput.py --arch sd15 --batch-size 16 --steps 30 [--gradient-checkpointing]

Prints a table: card, dtype, resolution, batch, samples/s (median over logging windows after warm-up),
peak GPU memory, and the time 1M samples (the paper's SD1.5 run) would take at that rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from dicecfg import DistillConfig, distill
from dicecfg.archs import random_pipeline
from dicecfg.runs import read_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", help="write the result row here")
    a = ap.parse_args()
    pipe = random_pipeline(a.arch, dtype=torch.bfloat16, device="cuda")
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
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        distill(pipe, prompts, config=cfg, output_dir=run)
        wall = time.perf_counter() - t0
        rates = [r["samples_per_s"] for r in read_stats(run) if "samples_per_s" in r][
            1:
        ]  # drop warm-up window
    rate = statistics.median(rates)
    row = {
        "card": torch.cuda.get_device_name(),
        "arch": a.arch,
        "dtype": "bf16 weights + bf16 autocast",
        "resolution": pipe.unet.config.sample_size * pipe.vae_scale_factor,
        "batch": a.batch_size,
        "grad_ckpt": a.gradient_checkpointing,
        "samples_per_s": round(rate, 2),
        "s_per_step": round(a.batch_size / rate, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "hours_for_1M_samples_1gpu": round(1e6 / rate / 3600, 1),
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(row))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print("| card | arch | res | batch | grad ckpt | samples/s | s/step | peak GiB | h per 1M samples |")
    print(
        f"| {row['card']} | {a.arch} | {row['resolution']} | {a.batch_size} | {a.gradient_checkpointing} | "
        f"{row['samples_per_s']} | {row['s_per_step']} | {row['peak_mem_gib']} | {row['hours_for_1M_samples_1gpu']} |"
    )


if __name__ == "__main__":
    main()
