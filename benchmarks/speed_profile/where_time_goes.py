"""Where the GPU time of distillation and of fast DICE sampling goes (random full-size weights, one GPU).

    python benchmarks/speed_profile/where_time_goes.py distill --arch sd15 --batch-size 16 --variant compile --steps 40
    python benchmarks/speed_profile/where_time_goes.py sample --arch pixart --batch-size 1 --fast graphs

`distill`: runs ``distill()`` as ``benchmarks/distill_throughput.py`` does, with one of the variants below, and
prints samples/s (median over logging windows, the first dropped), the fraction of the card's dense bf16 peak
(FLOPs from ``dicecfg.training.flops.update_flops``), peak memory, the first logged loss (parity between
variants) and, with ``--profile``, the GPU kernel time of a few steps grouped by kind (matrix products,
convolutions, attention, normalisation, elementwise/copies, other) and the GPU's idle share.

Variants (comma-separated, applied together): ``eager``, ``compile`` (the default of ``dice train`` on CUDA),
``cl`` (the denoiser in channels_last), ``pure`` (no autocast around the bf16 denoiser: ``mixed_precision="no"``),
``fuse`` (diffusers' fused QKV projections), ``cudnn`` (SDPA through cuDNN attention).

`sample`: times fast DICE against fast unguided sampling (one pipeline call, latents out) and, with
``--profile``, lists the CPU-side operations of each call that the other lacks or spends more in.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "distill_throughput"))
from distill_throughput import flops_per_sample, peak_tflops  # noqa: E402

from dicecfg import DistillConfig, distill  # noqa: E402
from dicecfg.bench.archs import random_pipeline  # noqa: E402
from dicecfg.runs.folder import read_stats  # noqa: E402

KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("conv", ("conv", "implicit_gemm", "xmma_fprop", "xmma_dgrad", "sm90_xmma", "cudnn")),
    ("matmul", ("gemm", "cutlass", "matmul", "nvjet", "sm90_", "ampere_")),
    ("norm", ("norm", "welford", "group_norm", "layer_norm")),
    ("elementwise/copy", ("elementwise", "copy", "cat", "triton_poi", "vectorized", "unrolled", "fill", "add", "mul")),
    ("reduction", ("reduce", "triton_red", "triton_per", "sum", "mean")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def kernel_table(prof, wall_ms: float, top: int = 25) -> dict:
    """GPU kernel time by kind and the top kernels, from a finished profiler."""
    by_kind: dict[str, float] = collections.Counter()
    per_kernel: dict[str, float] = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            by_kind[kind_of(e.name)] += us / 1000.0
            per_kernel[e.name[:90]] += us / 1000.0
    busy = sum(by_kind.values())
    return {
        "wall_ms": round(wall_ms, 1),
        "gpu_busy_ms": round(busy, 1),
        "gpu_idle_pct": round(100 * max(0.0, 1 - busy / wall_ms), 1),
        "by_kind_ms": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(k, round(v, 2)) for k, v in per_kernel.most_common(top)],
    }


@contextlib.contextmanager
def _patched(obj, name, value):
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


@contextlib.contextmanager
def variant_context(pipe, variants: set[str]):
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    if "cl" in variants:
        den.to(memory_format=torch.channels_last)
    if "fuse" in variants:
        den.fuse_qkv_projections()
    with contextlib.ExitStack() as stack:
        if "cudnn" in variants:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]))
        yield


def cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pipeline(a, dtype):
    """The random full-size architecture ``--arch`` on CUDA, or ``--model`` (e.g. mini, for a CPU smoke test)."""
    if a.model:
        from dicecfg.pipeline import load_pipeline

        return load_pipeline(a.model, device=a.device or "cpu", dtype=a.dtype)
    return random_pipeline(a.arch, dtype=dtype, device="cuda")


def run_distill(a) -> dict:
    variants = set(a.variant.split(","))
    pipe = pipeline(a, torch.bfloat16)
    prompts = ["a photo of a cat on the beach", "a red car in the city at night", "a dog", "a blue car"] * 8
    cfg = DistillConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        teacher_pool=a.batch_size,
        teacher_steps=2,
        eval_pairs=a.batch_size,
        eval_every=a.eval_every,
        log_every=5,
        checkpoint_every=10**9,
        progress=False,
        compile="compile" in variants,
        mixed_precision="no" if "pure" in variants else a.mixed_precision,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    prof_out = {}
    with contextlib.ExitStack() as stack:
        if a.profile:  # the last `profile` steps of the run: the profiler steps at each update's start
            from torch.profiler import ProfilerActivity, profile, schedule

            from dicecfg.training.objective import Objective

            first = a.steps - a.profile
            prof = stack.enter_context(
                profile(
                    activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                    schedule=schedule(wait=first - 1, warmup=1, active=a.profile),
                )
            )
            marks: list[float] = []
            plain = Objective.accumulate

            def accumulate(self, sharpener, step):
                if step in (first, a.steps - 1):
                    cuda_sync()
                    marks.append(time.perf_counter())
                prof.step()
                return plain(self, sharpener, step)

            stack.enter_context(_patched(Objective, "accumulate", accumulate))
        run = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(variant_context(pipe, variants))
        t0 = time.perf_counter()
        distill(pipe, prompts, config=cfg, output_dir=run)
        wall = time.perf_counter() - t0
        stats = read_stats(run)
    if a.profile:
        per_step = (marks[1] - marks[0]) * 1000.0 / max(1, a.profile - 1)
        prof_out = kernel_table(prof, per_step * a.profile)
    rates = [r["samples_per_s"] for r in stats if "samples_per_s" in r]
    rates = rates[1:] or rates  # the first window (warm-up, compilation) dropped where there are more
    losses = [r["loss"] for r in stats if "loss" in r]
    flops = flops_per_sample(a.arch, a.batch_size, None, "paper") if not a.model else {"per_sample": 0.0}
    rate = statistics.median(rates)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_tflops(card)
    row = {
        "study": "distill",
        "card": card,
        "torch": torch.__version__,
        "arch": a.arch,
        "batch": a.batch_size,
        "variant": a.variant,
        "steps": a.steps,
        "samples_per_s": round(rate, 2),
        "rates": [round(r, 1) for r in rates],
        "tflop_per_sample": round(flops["per_sample"] / 1e12, 4),
        "fraction_of_peak": round(flops["per_sample"] * rate / 1e12 / peak, 3) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None,
        "first_losses": [round(x, 6) for x in losses[:3]],
        "losses": [round(x, 6) for x in losses],
        "eval_losses": [round(r["eval_loss"], 6) for r in stats if "eval_loss" in r],
        "wall_s": round(wall, 1),
    }
    if prof_out:
        row["profile_steps"] = a.profile
        row["profile"] = prof_out
    return row


def run_sample(a) -> dict:
    from dicecfg.bench.speed import random_sharpener
    from dicecfg.families import family_of
    from dicecfg.sampling.generate import generators, sample_batch
    from dicecfg.sampling.methods import Dice, Unguided

    pipe = pipeline(a, torch.float16)
    fam = family_of(pipe)
    cond, neg = fam.encode(pipe, ["a photo of a red car in the city at night"] * a.batch_size), fam.encode(
        pipe, [""] * a.batch_size
    )
    sharp = random_sharpener(fam.dim(pipe), fam.name, fam.num_tokens(pipe)).to(cond.embeds.device, cond.embeds.dtype)
    methods = {"dice": Dice(sharp, 1.0), "unguided": Unguided()}
    common = dict(num_inference_steps=20, output_type="latent")

    def call(name):
        gens = generators(pipe._execution_device, range(a.batch_size))
        return sample_batch(pipe, fam, methods[name], cond, neg, gens, fast=a.fast, **common)

    def timed(name) -> float:
        if not torch.cuda.is_available():
            t0 = time.perf_counter()
            call(name)
            return (time.perf_counter() - t0) * 1000.0
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        call(name)
        e.record()
        e.synchronize()
        return s.elapsed_time(e)

    times = {k: [] for k in methods}
    with torch.inference_mode():
        for _ in range(3):
            for k in methods:
                call(k)
        for _ in range(a.repeats):
            for k in methods:
                times[k].append(timed(k))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "study": "sample",
            "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "arch": a.model or a.arch,
            "batch": a.batch_size,
            "fast": a.fast,
            "ms": {k: round(v, 2) for k, v in med.items()},
            "dice_over_unguided_pct": round(100 * (med["dice"] / med["unguided"] - 1), 2),
        }
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            ops = {}
            for k in methods:
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    call(k)
                    cuda_sync()
                ops[k] = {
                    e.key: (round(e.cpu_time_total / 1000, 2), e.count) for e in prof.key_averages()
                }
            extra = []
            for key, (ms, n) in ops["dice"].items():
                base, bn = ops["unguided"].get(key, (0.0, 0))
                if ms - base > 0.3 or n != bn:
                    extra.append((key[:80], ms, n, base, bn))
            extra.sort(key=lambda r: -(r[1] - r[3]))
            row["dice_extra_cpu_ops"] = extra[:30]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("distill", "sample"))
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--model", help="a model to load instead of --arch (e.g. mini: a CPU smoke test)")
    ap.add_argument("--device", help="with --model")
    ap.add_argument("--dtype", default="float32", help="with --model: its weights' dtype (bfloat16: as dice train on CUDA)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variant", default="compile")
    ap.add_argument("--fast", default="graphs")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile", type=int, default=0, help="distill: profile this many more steps; sample: 1 = on")
    ap.add_argument("--eval-every", type=int, default=0, help="distill: held-out loss every this many steps")
    ap.add_argument("--mixed-precision", default="auto", help="distill: DistillConfig.mixed_precision")
    ap.add_argument("--json", help="append the row to this file")
    ap.add_argument("--code", default="new", help="a label of the code that ran (gpu.sh: old for the baseline)")
    a = ap.parse_args()
    row = run_distill(a) if a.what == "distill" else run_sample(a)
    row["code"] = a.code
    line = json.dumps(row)
    print(line[:3000])
    if a.json:
        with open(a.json, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
