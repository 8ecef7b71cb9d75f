"""Distillation throughput of `distill` on a full-size architecture with random weights.

    python benchmarks/distill_throughput/distill_throughput.py --arch sd15 --batch-size 16 --steps 30 [--gradient-checkpointing]
    torchrun --nproc-per-node 2 benchmarks/distill_throughput/distill_throughput.py --batch-size 16 --steps 30 --run-dir /tmp/tp2

Under torchrun each process takes cuda:LOCAL_RANK and the batch size is per GPU (global batch = batch x GPUs);
the run folder must then be one path all processes share (--run-dir). samples/s counts the global batch.

Prints a table: card, dtype, resolution, batch, samples/s (median over logging windows after warm-up),
peak GPU memory, the time 1M samples (the paper's SD1.5 run) would take at that rate, and the model FLOP/s that
rate achieves: FLOPs of one training sample (counted by `dicecfg.training.flops.update_flops` on the meta
device) x samples/s, also as a fraction of the card's dense bf16 peak (`PEAK_BF16_DENSE`).

    python benchmarks/distill_throughput/distill_throughput.py --arch sdxl --flops-only     # the FLOP count alone, any machine
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
from dicecfg.families import family_of
from dicecfg.runs.folder import read_stats
from dicecfg.sharpener import Sharpener
from dicecfg.training.flops import update_flops

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s: half the "with sparsity" figures of NVIDIA's datasheets
# (H100 SXM5 and H200 1,979; H100 PCIe 1,513; A100 312 dense).
PEAK_BF16_DENSE = {"H100 80GB HBM3": 989.4, "H200": 989.4, "H100 PCIe": 756.5, "A100": 312.0}


def peak_tflops(card: str) -> float | None:
    """The dense bf16 peak of a card, from its CUDA device name (None: not in the table)."""
    return next((v for k, v in PEAK_BF16_DENSE.items() if k in card), None)


def flops_per_sample(arch: str, batch: int, resolution: int | None, sharpener_arch: str) -> dict:
    """FLOPs of one training update of ``arch`` at ``batch``, counted on the meta device (no memory)."""
    pipe = random_pipeline(arch, dtype=torch.bfloat16, device="meta")
    fam = family_of(pipe)
    sharp = Sharpener(
        fam.dim(pipe), 512, 8, family=fam.name, num_tokens=fam.num_tokens(pipe),
        copy_first_token=fam.copy_first_token, arch=sharpener_arch,
    )  # fmt: skip
    return update_flops(pipe, sharp, batch, resolution)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", help="write the result row here")
    ap.add_argument("--run-dir", help="run folder (default: a temporary one; needed under torchrun)")
    ap.add_argument("--sharpener-arch", default="paper", choices=("paper", "block"))
    ap.add_argument("--flops-only", action="store_true", help="print the FLOP count of one update and stop")
    a = ap.parse_args()
    flops = flops_per_sample(a.arch, a.batch_size, None, a.sharpener_arch)
    if a.flops_only:
        print(json.dumps({"arch": a.arch, **flops}))
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    torch.cuda.set_device(device)
    pipe = random_pipeline(a.arch, dtype=torch.bfloat16, device=device)
    prompts = ["a photo of a cat on the beach", "a red car in the city at night", "a dog", "a blue car"] * 8
    cfg = DistillConfig(
        arch=a.sharpener_arch,
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
        "tflop_per_sample": round(flops["per_sample"] / 1e12, 4),
        "achieved_tflops": round(flops["per_sample"] * rate / 1e12, 1),
    }
    peak = peak_tflops(row["card"])
    row |= {"peak_bf16_dense_tflops": peak}
    if peak:
        row["fraction_of_peak"] = round(row["achieved_tflops"] / (peak * world), 3)
    print(json.dumps(row))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(
        "| card | arch | res | GPUs | batch/GPU | grad ckpt | samples/s | s/step | peak GiB (rank 0) | h per 1M "
        "| TFLOP/s | of bf16 peak |"
    )
    print(
        f"| {row['card']} | {a.arch} | {row['resolution']} | {world} | {a.batch_size} | {a.gradient_checkpointing} "
        f"| {row['samples_per_s']} | {row['s_per_step']} | {row['peak_mem_gib']} | {row['hours_for_1M_samples']} "
        f"| {row['achieved_tflops']} | {row.get('fraction_of_peak', '-')} |"
    )


if __name__ == "__main__":
    main()
