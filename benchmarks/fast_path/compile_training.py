"""`distill` with and without `DistillConfig(compile=True)`: loss parity and speed, one process, same seeds.

    python benchmarks/fast_path/compile_training.py --model mini --device cpu --steps 30 --batch-size 16 --out benchmarks/fast_path/results/compile_training_cpu.json

Trains the same run twice (eager, then with the denoiser torch.compiled by Inductor) and reports the largest
relative difference of the per-step training losses and of the held-out loss, the steady-state samples/s of
each (median over logging windows after the first), and the wall time of the first `--log-every` steps
(compilation included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dicecfg import DistillConfig, distill, load_pipeline
from dicecfg.pipeline import resolve_device
from dicecfg.runs.folder import read_stats
from dicecfg.world import validation_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pipe = load_pipeline(a.model, device=resolve_device(a.device))
    prompts = [it.prompt for it in validation_set(256)]
    result = {"command": " ".join(sys.argv), "runs": {}}
    for compiled in (False, True):
        cfg = DistillConfig(
            steps=a.steps, batch_size=a.batch_size, teacher_pool=64, teacher_steps=10, eval_pairs=32,
            eval_every=a.steps, log_every=a.log_every, checkpoint_every=10**6, compile=compiled, progress=False,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as run:
            t0 = time.perf_counter()
            distill(pipe, prompts, config=cfg, output_dir=run)
            stats = read_stats(Path(run))
        rates = [r["samples_per_s"] for r in stats if "samples_per_s" in r]
        result["runs"]["compile" if compiled else "eager"] = {
            "wall_s": time.perf_counter() - t0,
            "losses": [r["loss"] for r in stats if "loss" in r],
            "eval_losses": [r["eval_loss"] for r in stats if "eval_loss" in r],
            "first_window_samples_per_s": rates[0],
            "steady_samples_per_s": statistics.median(rates[1:]),
        }
    e, c = result["runs"]["eager"], result["runs"]["compile"]
    rel = [abs(x - y) / abs(x) for x, y in zip(e["losses"], c["losses"], strict=True)]
    result["max_rel_loss_diff"] = max(rel)
    result["eval_loss_rel_diff"] = abs(e["eval_losses"][-1] - c["eval_losses"][-1]) / abs(
        e["eval_losses"][-1]
    )
    result["speedup"] = c["steady_samples_per_s"] / e["steady_samples_per_s"]
    Path(a.out).write_text(json.dumps(result, indent=1))
    for k in ("eager", "compile"):
        r = result["runs"][k]
        print(f"{k}: {r['steady_samples_per_s']:.1f} samples/s (first window {r['first_window_samples_per_s']:.2f}),"
              f" held-out loss {r['eval_losses'][-1]:.4f}, wall {r['wall_s']:.0f} s")  # fmt: skip
    print(f"compiled / eager samples/s: {result['speedup']:.3f}; largest relative difference of a step's loss: "
          f"{result['max_rel_loss_diff']:.2e}; of the held-out loss: {result['eval_loss_rel_diff']:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
