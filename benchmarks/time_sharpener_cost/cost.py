"""What a continuous-time sharpener (``time_embed="sinusoidal"``) adds to a DICE call, against the denoiser.

A static sharpener makes one edit per image per DICE call; a continuous-time one makes one per step: ``Dice`` makes
all of them in one sharpener call over (steps x images) rows at the call's first step. Both are read against the
denoiser passes of the same call (batch 1, one pass per step), in the same run:

    python benchmarks/time_sharpener_cost/cost.py --flops                  # FLOPs: SD1.5 at 512, SDXL at 1024
    python benchmarks/time_sharpener_cost/cost.py --cpu --arch sd15 --resolution 512      # wall time on this CPU

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (full-size architectures
with random weights, ``dicecfg.bench.archs``; no memory, no compute), as ``dicecfg.training.flops`` counts a
training update. Wall time is measured on this machine's CPU in float32 (medians of repeats taken in rounds,
the denoiser's in the same rounds; one thread by default: on a CPU shared with other work, two threads wait on
each other and small calls in a row come out 2-3x slower than alone); it says nothing about a GPU, where one
small call is bound by kernel launches, not FLOPs: `dice bench --fast --time-embed sinusoidal` measures that (columns ``sharpener %``,
``edits/image``, ``one sharpener call ms``).

Prints a markdown table per mode: the denoiser's cost per call, each sharpener's cost per DICE call, and the
ratios (``extra``: the continuous-time sharpener's cost minus the static one's, over the denoiser's passes).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dicecfg.bench.archs import arch_config, random_pipeline
from dicecfg.families import family_of
from dicecfg.sharpener import Sharpener

NATIVE = {"sd15": 512, "sdxl": 1024}
PROMPT = "a photo of a red car in the city at night"


def sharpeners(dim: int, num_tokens: int, family: str, device: str) -> dict[str, Sharpener]:
    """The paper's size (inner 512, 8 heads): static and continuous-time, each network."""
    out = {}
    for arch in ("paper", "block"):
        for timed in ("none", "sinusoidal"):
            with torch.device(device):
                out[f"{arch}/{timed}"] = Sharpener(
                    dim, 512, 8, family=family, num_tokens=num_tokens, arch=arch, time_embed=timed
                ).eval()
    return out


def inputs(pipe: Any, resolution: int) -> tuple[Any, torch.Tensor, torch.Tensor, Any, Any]:
    """The family, one noisy latent at ``resolution``, a timestep, and the prompt's and "" encodings (batch 1)."""
    fam = family_of(pipe)
    param = next(fam.denoiser(pipe).parameters())
    f = pipe.vae_scale_factor
    x = torch.randn(1, fam.latent_channels(pipe), resolution // f, resolution // f, device=param.device)
    t = torch.full((1,), 500, device=param.device, dtype=torch.long)
    with torch.no_grad():
        cond, neg = fam.encode(pipe, [PROMPT]), fam.encode(pipe, [""])
    return fam, x.to(param.dtype), t, cond, neg


def sharpener_calls(s: Sharpener, cond: Any, neg: Any, steps: int) -> dict[str, Callable[[], Any]]:
    """One DICE call's sharpener work at batch 1: ``once`` (a static sharpener: one edit), ``batched`` (a
    continuous-time one as ``Dice`` runs it: every step's edit in one call) and ``per_step`` (one call a step)."""
    c, cn = cond.embeds, neg.embeds
    ts = torch.linspace(999, 0, steps, device=c.device).round()
    if not s.time_dependent:
        return {"once": lambda: s.edit(c, cn)}
    return {
        "batched": lambda: s.edit(c.expand(steps, -1, -1), cn, t=ts),
        "per_step": lambda: [s.edit(c, cn, t=ts[i : i + 1]) for i in range(steps)],
    }


def flops(fn: Callable[[], Any]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flop_rows(archs: list[str], steps: int) -> list[dict[str, Any]]:
    rows = []
    for name in archs:
        pipe = random_pipeline(name, dtype=torch.float32, device="meta")
        res = NATIVE[name]
        fam, x, t, cond, neg = inputs(pipe, res)
        den = flops(lambda: fam.denoise(pipe, x, t, cond))  # noqa: B023 (called here, in this iteration)
        for key, s in sharpeners(fam.dim(pipe), fam.num_tokens(pipe), fam.name, "meta").items():
            for how, fn in sharpener_calls(s, cond, neg, steps).items():
                rows.append({"model": f"{name} {res}px", "sharpener": key, "how": how,
                             "denoiser_per_call": den, "sharpener_per_dice_call": flops(fn)})  # fmt: skip
    return rows


def interleaved(fns: dict[str, Callable[[], Any]], repeats: dict[str, int]) -> dict[str, float]:
    """Median milliseconds of each function on the CPU, after one warm-up call each: timed in rounds, every
    function once a round (``repeats[k]`` rounds for function k, spread over the rounds), so a change of load
    on a shared machine hits them alike."""
    rounds = max(repeats.values())
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for r in range(rounds):
            for k, fn in fns.items():
                if r % max(1, rounds // repeats[k]) == 0 and len(times[k]) < repeats[k]:
                    t0 = time.perf_counter()
                    fn()
                    times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_rows(name: str, resolution: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    pipe = random_pipeline(name, dtype=torch.float32, device="cpu")
    fam, x, t, cond, neg = inputs(pipe, resolution)
    fns: dict[str, Callable[[], Any]] = {"denoiser": lambda: fam.denoise(pipe, x, t, cond)}
    for key, s in sharpeners(fam.dim(pipe), fam.num_tokens(pipe), fam.name, "cpu").items():
        fns |= {f"{key}:{how}": fn for how, fn in sharpener_calls(s, cond, neg, steps).items()}
    med = interleaved(fns, {k: max(1, repeats // 10) if k == "denoiser" else repeats for k in fns})
    return [{"model": f"{name} {resolution}px", "sharpener": k.split(":")[0], "how": k.split(":")[1],
             "denoiser_per_call": med["denoiser"], "sharpener_per_dice_call": v}
            for k, v in med.items() if k != "denoiser"]  # fmt: skip


def table(rows: list[dict[str, Any]], steps: int, unit: str, scale: float) -> str:
    """Per row: the costs and the ratios to ``steps`` denoiser passes (one DICE call at batch 1); ``extra``: over
    the static sharpener of the same network and model."""
    static = {(r["model"], r["sharpener"].split("/")[0]): r["sharpener_per_dice_call"] for r in rows
              if r["how"] == "once"}  # fmt: skip
    head = ["model", "sharpener", "edits made", f"denoiser {unit}/call", f"sharpener {unit}/DICE call",
            f"sharpener / {steps} denoiser calls", "extra over static"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dice = steps * r["denoiser_per_call"]
        base = static[(r["model"], r["sharpener"].split("/")[0])]
        extra = "-" if r["how"] == "once" else f"{100 * (r['sharpener_per_dice_call'] - base) / dice:.4f}%"
        how = {
            "once": "1 (one call)",
            "batched": f"{steps} (one call)",
            "per_step": f"{steps} ({steps} calls)",
        }
        lines.append(
            f"| {r['model']} | {r['sharpener']} | {how[r['how']]} | {r['denoiser_per_call'] / scale:.4g} | "
            f"{r['sharpener_per_dice_call'] / scale:.4g} | {100 * r['sharpener_per_dice_call'] / dice:.4f}% | "
            f"{extra} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", action="store_true", help="count FLOPs on the meta device (SD1.5, SDXL)")
    ap.add_argument("--cpu", action="store_true", help="time on this CPU")
    ap.add_argument("--arch", default="sd15", choices=list(NATIVE), help="--cpu: the architecture")
    ap.add_argument("--resolution", type=int, default=None, help="--cpu: pixels (default: native)")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps of the DICE call")
    ap.add_argument("--repeats", type=int, default=30, help="--cpu: sharpener repeats (the denoiser: 1/10)")
    ap.add_argument(
        "--threads", type=int, default=1, help="--cpu: torch threads (1: steady on a shared machine)"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; text widths: " +
          ", ".join(f"{a} {arch_config(a)['unet']['cross_attention_dim']}" for a in NATIVE))  # fmt: skip
    if args.flops:
        print("\nFLOPs (FlopCounterMode, meta device), batch 1:\n")
        print(table(flop_rows(list(NATIVE), args.steps), args.steps, "GFLOP", 1e9))
    if args.cpu:
        res = args.resolution or NATIVE[args.arch]
        print(f"\nCPU wall time (float32, this machine), batch 1, {args.arch} at {res}px:\n")
        print(table(cpu_rows(args.arch, res, args.steps, args.repeats), args.steps, "ms", 1.0))


if __name__ == "__main__":
    main()
