"""CPU cost of the shipped mini model: 8 images x 20 steps, CFG vs DICE vs unguided, in one process.

    python benchmarks/mini_model/cpu_speed.py [--repeats 3]

Times ``generate()`` end to end (text encoding, sharpener, 20 DPM-Solver++ steps, VAE decode) for one batch of
8 held-out prompts; the methods take turns in every repeat; prints the median of the repeats after one warm-up,
and the CFG/DICE ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.world import heldout_set


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    items = heldout_set()[:8]
    prompts, seeds = [i.prompt for i in items], [i.seed for i in items]
    pipe, sharp = load_pipeline(), Sharpener.from_pretrained()

    def run(method: str) -> float:
        t0 = time.perf_counter()
        list(
            generate(pipe, prompts, method=method, seeds=seeds, sharpener=sharp, batch_size=8, progress=False)
        )
        return time.perf_counter() - t0

    for m in ("unguided", "cfg", "dice"):
        run(m)  # warm-up
    runs: dict[str, list[float]] = {m: [] for m in ("unguided", "cfg", "dice")}
    for _ in range(a.repeats):  # interleaved, so a slow spell of the machine hits every method alike
        for m in runs:
            runs[m].append(run(m))
    times = {m: statistics.median(v) for m, v in runs.items()}
    print(
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}"
    )
    print("| method | NFE per image | seconds for 8 images x 20 steps |\n|---|---|---|")
    for m, nfe in (("unguided", 20), ("cfg", 40), ("dice", 20)):
        print(f"| {m} | {nfe} | {times[m]:.2f} |")
    print(f"CFG / DICE = {times['cfg'] / times['dice']:.2f}")


if __name__ == "__main__":
    main()
