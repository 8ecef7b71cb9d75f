"""The compiled fast path across processes: `dice bench --fast compile` run twice, each in a fresh process, with
one Inductor cache folder that starts empty. The first process compiles every shape; the second finds the
kernels in PyTorch's on-disk caches.

    python benchmarks/fast_path/compile_cache.py --model mini --device cpu --batch-sizes 1 4 --out benchmarks/fast_path/results/compile_cache_cpu.json

Prints, per process and batch size: eager CFG / DICE, compiled CFG / DICE / unguided (medians, ms), the first
compiled call of each shape (compilation included), and the largest latent difference compiled vs eager.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", nargs="+", default=["1"])
    ap.add_argument("--steps", default="20")
    ap.add_argument("--repeats", default="5")
    ap.add_argument("--out", required=True, help="JSON file for both processes' rows")
    a = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="dice-inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    rows = []
    for proc in (1, 2):
        out = Path(tempfile.mkdtemp()) / "bench.json"
        cmd = [sys.executable, "-m", "dicecfg.cli", "-q", "bench", "--model", a.model, "--device", a.device]
        cmd += ["--batch-sizes", *a.batch_sizes, "--steps", a.steps, "--repeats", a.repeats, "--no-decode"]
        cmd += ["--fast", "compile", "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
        for r in json.loads(out.read_text())["rows"]:
            rows.append({"process": proc, "process_wall_s": wall, **r})
    Path(a.out).write_text(
        json.dumps({"command": " ".join(sys.argv), "cache_dir": cache, "rows": rows}, indent=1)
    )
    cols = (
        "process batch eager_cfg eager_dice compiled_cfg compiled_dice compiled_unguided first_cfg first_dice"
    )
    print(cols.replace(" ", " | "))
    for r in rows:
        vals = [r["process"], r["batch"], r["cfg_ms"], r["dice_ms"], r["fast_cfg_ms"], r["fast_dice_ms"]]
        vals += [r["fast_unguided_ms"], r["fast_cfg_first_ms"], r["fast_dice_first_ms"]]
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in vals))
        print(
            f"  max |compiled - eager| latents: CFG {r['fast_cfg_max_abs_diff']:.2e}, DICE {r['fast_dice_max_abs_diff']:.2e}"
        )


if __name__ == "__main__":
    main()
