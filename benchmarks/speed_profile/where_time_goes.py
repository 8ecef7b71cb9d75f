"""Where the GPU time of distillation and of fast DICE sampling goes (random full-size weights, one GPU).

    python benchmarks/speed_profile/where_time_goes.py distill --arch sd15 --batch-size 16 --variant compile --steps 40
    python benchmarks/speed_profile/where_time_goes.py sample --arch pixart --batch-size 1 --fast graphs

`distill`: runs ``distill()`` as ``benchmarks/distill_throughput.py`` does, with the variants below, and
prints samples/s (median over logging windows, the first dropped), the fraction of the card's dense bf16 peak
(FLOPs from ``dicecfg.training.flops.update_flops``), peak memory, the first logged loss (parity between
variants), whether the sharpener's AdamW ran fused and, with ``--profile``, the GPU kernel time of a few steps
grouped by kind (matrix products, convolutions, attention, normalisation, elementwise/copies, other) and the GPU's
idle share. A run stopped by SIGTERM (gpu.sh's time cap) still prints the windows it logged (``interrupted``).

Variants (comma-separated, applied together; ``VARIANTS`` holds each one's line, ``NEW_CODE`` those that need the
options of this code, which the ``old:`` baseline of gpu.sh lacks): ``eager``, ``compile`` (the default of
``dice train`` on CUDA), ``ro`` / ``mat`` (compiled in torch.compile's mode "reduce-overhead" /
"max-autotune-no-cudagraphs": ``DistillConfig.compile_mode``), ``clc`` (compiled, with
``DistillConfig.channels_last``), ``cl`` (the denoiser converted to channels_last before the run, any code),
``pure`` (no autocast around the bf16 denoiser: ``mixed_precision="no"``), ``fuse`` (diffusers' fused QKV
projections), ``cudnn`` (SDPA through cuDNN attention), ``flash`` (SDPA through flash attention alone), ``pad64``
(attention heads under 64 wide zero-padded to 64: SD1.5's 40), ``fusedadam`` / ``plainadam`` (the sharpener's
AdamW forced fused / unfused), ``gc`` (gradient checkpointing).

`sample`: times fast DICE against fast unguided sampling (one pipeline call, latents out) and, with
``--profile``, lists the CPU-side operations of each call that the other lacks or spends more in.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
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
from dicecfg.errors import TrainingInterrupted  # noqa: E402
from dicecfg.runs.folder import read_stats  # noqa: E402

VARIANTS = {  # name -> what it changes (`distill`)
    "eager": "no compilation (compile=False)",
    "compile": "the frozen denoiser torch.compiled: the default of dice train on CUDA",
    "ro": 'compiled in mode "reduce-overhead": CUDA graph trees (compile_mode)',
    "mat": 'compiled in mode "max-autotune-no-cudagraphs" (compile_mode)',
    "clc": "compiled, the denoiser's convolutions and latents in channels_last (channels_last=True)",
    "cl": "the denoiser converted to channels_last before the run (its latents as made; any code)",
    "pure": 'no autocast around the bf16 denoiser (mixed_precision="no")',
    "fuse": "diffusers' fused QKV projections",
    "cudnn": "SDPA through cuDNN attention (flash as the fallback)",
    "flash": "SDPA through flash attention alone",
    "pad64": "attention heads under 64 wide zero-padded to 64 (SD1.5's 40; the same attention)",
    "fusedadam": "the sharpener's AdamW forced fused (on the old code too)",
    "plainadam": "the sharpener's AdamW forced unfused (PyTorch's default, foreach on CUDA)",
    "gc": "gradient checkpointing (gradient_checkpointing=True)",
}
COMPILED = {"compile", "ro", "mat", "clc"}
# variant -> the DistillConfig option it needs (the code of gpu.sh's old: rows may lack it)
NEW_CODE = {"ro": "compile_mode", "mat": "compile_mode", "clc": "channels_last"}
# variants of one side exclude those of the other
EXCLUSIVE = (({"eager"}, COMPILED), ({"ro"}, {"mat"}), ({"cudnn"}, {"flash"}), ({"fusedadam"}, {"plainadam"}))


def parse_variants(text: str) -> set[str]:
    """The variants of ``--variant`` (comma-separated), refused when unknown, contradictory or missing from the
    code that runs (``old:`` rows run an earlier ``dicecfg``)."""
    variants = set(text.split(","))
    unknown = sorted(variants - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    for one, other in EXCLUSIVE:
        if variants & one and variants & other:
            raise SystemExit(f"variant {min(variants & one)} excludes {', '.join(sorted(variants & other))}")
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    missing = sorted(v for v in variants if NEW_CODE.get(v, "steps") not in fields)
    if missing:
        raise SystemExit(
            f"variant(s) {', '.join(missing)} need DistillConfig options this code lacks (an old: row?)"
        )
    return variants


def config_options(variants: set[str], mixed_precision: str) -> dict:
    """The DistillConfig options of ``variants`` (only those set: an old: row's DistillConfig lacks the new ones)."""
    out = {
        "compile": bool(variants & COMPILED),
        "mixed_precision": "no" if "pure" in variants else mixed_precision,
    }
    if "ro" in variants:
        out["compile_mode"] = "reduce-overhead"
    if "mat" in variants:
        out["compile_mode"] = "max-autotune-no-cudagraphs"
    if "clc" in variants:
        out["channels_last"] = True
    if "gc" in variants:
        out["gradient_checkpointing"] = True
    return out


KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("conv", ("conv", "implicit_gemm", "xmma_fprop", "xmma_dgrad", "sm90_xmma", "cudnn")),
    ("matmul", ("gemm", "cutlass", "matmul", "nvjet", "sm90_", "ampere_")),
    ("norm", ("norm", "welford", "group_norm", "layer_norm")),
    (
        "elementwise/copy",
        ("elementwise", "copy", "cat", "triton_poi", "vectorized", "unrolled", "fill", "add", "mul"),
    ),
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


def padded_sdpa(sdpa, width: int = 64):
    """``scaled_dot_product_attention`` with heads narrower than ``width`` zero-padded to it: q.k and the softmax
    are unchanged (the scale stays that of the true width), the padded value columns give zeros, cut off after.
    Kernels made for 64-wide heads then run without padding of their own (SD1.5's heads are 40 wide)."""
    import torch.nn.functional as F

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        d = query.shape[-1]
        if d >= width or key.shape[-1] != d or value.shape[-1] != d:
            return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)
        pad = (0, width - d)
        out = sdpa(F.pad(query, pad), F.pad(key, pad), F.pad(value, pad), attn_mask, dropout_p, is_causal,
                   scale=d**-0.5 if scale is None else scale, **kwargs)  # fmt: skip
        return out[..., :d]

    return attention


class _AdamW(torch.optim.AdamW):
    """AdamW as the trainer makes it, with ``fused`` forced where ``force`` says (None: as asked); records what ran."""

    force: bool | None = None
    fused: list[bool] = []

    def __init__(self, params, *args, **kwargs):
        if self.force is not None:
            kwargs["fused"] = True if self.force else None
        super().__init__(params, *args, **kwargs)
        _AdamW.fused.append(bool(self.defaults.get("fused")))


@contextlib.contextmanager
def variant_context(pipe, variants: set[str]):
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    if "cl" in variants:
        den.to(memory_format=torch.channels_last)
    if "fuse" in variants:
        den.fuse_qkv_projections()
    with contextlib.ExitStack() as stack:
        if variants & {"cudnn", "flash"}:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kernels = [SDPBackend.CUDNN_ATTENTION] if "cudnn" in variants else []
            stack.enter_context(sdpa_kernel([*kernels, SDPBackend.FLASH_ATTENTION]))
        if "pad64" in variants:  # diffusers' attention processors call F.scaled_dot_product_attention by name
            sdpa = torch.nn.functional.scaled_dot_product_attention
            stack.enter_context(
                _patched(torch.nn.functional, "scaled_dot_product_attention", padded_sdpa(sdpa))
            )
        _AdamW.force = True if "fusedadam" in variants else False if "plainadam" in variants else None
        _AdamW.fused = []
        stack.enter_context(_patched(torch.optim, "AdamW", _AdamW))
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
    variants = parse_variants(a.variant)
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
        **config_options(variants, a.mixed_precision),
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
        if (
            a.no_eval
        ):  # the held-out loss at the start and the end (the end's compiles one more graph): skipped
            from dicecfg.training.objective import Objective

            stack.enter_context(_patched(Objective, "eval_loss", lambda self, sharpener: float("nan")))
        run = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(variant_context(pipe, variants))
        t0 = time.perf_counter()
        interrupted = False
        try:
            distill(pipe, prompts, config=cfg, output_dir=run)
        except TrainingInterrupted:  # gpu.sh's time cap (SIGTERM): keep the windows logged so far
            interrupted = True
        wall = time.perf_counter() - t0
        stats = read_stats(run)
    if a.profile and not interrupted:
        per_step = (marks[1] - marks[0]) * 1000.0 / max(1, a.profile - 1)
        prof_out = kernel_table(prof, per_step * a.profile)
    rates = [r["samples_per_s"] for r in stats if "samples_per_s" in r]
    rates = rates[1:] or rates  # the first window (warm-up, compilation) dropped where there are more
    losses = [r["loss"] for r in stats if "loss" in r]
    flops = flops_per_sample(a.arch, a.batch_size, None, "paper") if not a.model else {"per_sample": 0.0}
    rate = statistics.median(rates) if rates else 0.0
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_tflops(card)
    row = {
        "study": "distill",
        "card": card,
        "torch": torch.__version__,
        "arch": a.model or a.arch,
        "batch": a.batch_size,
        "variant": a.variant,
        "steps": a.steps,
        "samples_per_s": round(rate, 2),
        "rates": [round(r, 1) for r in rates],
        "tflop_per_sample": round(flops["per_sample"] / 1e12, 4),
        "fraction_of_peak": round(flops["per_sample"] * rate / 1e12 / peak, 3) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if torch.cuda.is_available()
        else None,
        "first_losses": [round(x, 6) for x in losses[:3]],
        "losses": [round(x, 6) for x in losses],
        "eval_losses": [
            round(r["eval_loss"], 6) for r in stats if "eval_loss" in r and r["eval_loss"] == r["eval_loss"]
        ],
        "adam_fused": _AdamW.fused[0] if _AdamW.fused else None,
        "interrupted": interrupted,
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
    cond, neg = (
        fam.encode(pipe, ["a photo of a red car in the city at night"] * a.batch_size),
        fam.encode(pipe, [""] * a.batch_size),
    )
    sharp = random_sharpener(fam.dim(pipe), fam.name, fam.num_tokens(pipe)).to(
        cond.embeds.device, cond.embeds.dtype
    )
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
                ops[k] = {e.key: (round(e.cpu_time_total / 1000, 2), e.count) for e in prof.key_averages()}
            extra = []
            for key, (ms, n) in ops["dice"].items():
                base, bn = ops["unguided"].get(key, (0.0, 0))
                if ms - base > 0.3 or n != bn:
                    extra.append((key[:80], ms, n, base, bn))
            extra.sort(key=lambda r: -(r[1] - r[3]))
            row["dice_extra_cpu_ops"] = extra[:30]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("distill", "sample"))
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--model", help="a model to load instead of --arch (e.g. mini: a CPU smoke test)")
    ap.add_argument("--device", help="with --model")
    ap.add_argument(
        "--dtype",
        default="float32",
        help="with --model: its weights' dtype (bfloat16: as dice train on CUDA)",
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variant", default="compile")
    ap.add_argument("--fast", default="graphs")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument(
        "--profile", type=int, default=0, help="distill: profile this many more steps; sample: 1 = on"
    )
    ap.add_argument("--eval-every", type=int, default=0, help="distill: held-out loss every this many steps")
    ap.add_argument("--no-eval", action="store_true", help="distill: no held-out loss at all (speed rows)")
    ap.add_argument("--mixed-precision", default="auto", help="distill: DistillConfig.mixed_precision")
    ap.add_argument("--json", help="append the row to this file")
    ap.add_argument(
        "--code", default="new", help="a label of the code that ran (gpu.sh: old for the baseline)"
    )
    a = ap.parse_args(argv)
    row = run_distill(a) if a.what == "distill" else run_sample(a)
    row["code"] = a.code
    line = json.dumps(row)
    print(line[:3000])
    if a.json:
        with open(a.json, "a") as f:
            f.write(line + "\n")
    return row


if __name__ == "__main__":
    main()
