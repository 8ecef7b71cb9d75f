"""Hand-made CUDA graphs (dicecfg.sampling.fast) versus torch.compile(mode="reduce-overhead"), on one architecture.

    python benchmarks/fast_path/compile_vs_graphs.py [--arch sd15] [--batch 1] [--steps 20] [--repeats 5] [--json OUT]

Times one unguided and one CFG sampling call (pre-encoded prompts, latents out, as `dice bench`) in three
ways: eager, the fast path, and the denoiser's forward wrapped in torch.compile(mode="reduce-overhead")
(Inductor kernels replayed through CUDA graphs). The first call of each (warm-up, capture, compilation) is
reported apart from the median of the steady-state calls. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dicecfg.bench.archs import random_pipeline
from dicecfg.bench.speed import PROMPT, Timer, device_name
from dicecfg.families import family_of
from dicecfg.sampling.generate import sample_batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    pipe = random_pipeline(a.arch, dtype=torch.float16, device="cuda")
    pipe.set_progress_bar_config(disable=True)
    fam, dev = family_of(pipe), torch.device("cuda")
    den = fam.denoiser(pipe)
    timer = Timer(dev)
    cond, neg = fam.encode(pipe, [PROMPT] * a.batch), fam.encode(pipe, [""] * a.batch)
    out: dict[str, torch.Tensor] = {}

    def run(method: str, fast: bool = False) -> None:
        gens = [torch.Generator(dev).manual_seed(i) for i in range(a.batch)]
        out[method], _ = sample_batch(
            pipe, fam, method, cond, neg, gens, num_inference_steps=a.steps, output_type="latent", fast=fast
        )

    def measure(mode: str, fast: bool) -> dict:
        rows = {}
        for method in ("unguided", "cfg"):
            t0 = time.perf_counter()
            run(method, fast)
            torch.cuda.synchronize()
            first = (time.perf_counter() - t0) * 1000.0
            run(method, fast)
            times = [timer(lambda m=method: run(m, fast)) for _ in range(a.repeats)]
            rows[method] = {"first_ms": first, "median_ms": statistics.median(times), "times_ms": times}
            print(f"{mode:8s} {method:8s} first {first:9.1f} ms  steady {rows[method]['median_ms']:8.2f} ms")
        return rows

    result = {"device": device_name(dev), "arch": a.arch, "batch": a.batch, "steps": a.steps}
    with torch.inference_mode():
        result["eager"] = measure("eager", False)
        ref = {k: v.float() for k, v in out.items()}
        result["graphs"] = measure("graphs", True)
        result["graphs_max_abs_diff"] = {k: (out[k].float() - ref[k]).abs().max().item() for k in ref}
        den.forward = torch.compile(den.forward, mode="reduce-overhead")
        try:
            result["compile"] = measure("compile", False)
            result["compile_max_abs_diff"] = {k: (out[k].float() - ref[k]).abs().max().item() for k in ref}
        except Exception as e:  # noqa: BLE001 - reported, the other rows stand
            result["compile"] = {"error": f"{type(e).__name__}: {e}"}
            print("compile failed:", result["compile"]["error"])
        finally:
            del den.forward
    result["versions"] = {"torch": torch.__version__}
    print(json.dumps({k: v for k, v in result.items() if k not in ("eager", "graphs", "compile")}, indent=1))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
