"""`dice eval` on 1 vs N GPUs: wall time of the same evaluation, and whether it made the same images (README.md).

    python benchmarks/parallel_sampling/study.py --work W [--prompts 2000] [--gpus 1 2] [--json W/study.json]

For each GPU count the same command runs in a fresh output folder W/gpusN (``dice -q eval --prompts FILE
--limit P --gpus N ...``, mini model by default); the prompts are P shapes-world training captions (seeded, so
every run and machine has the same). A row records the card, dtype, versions, the command, its wall time (process
start-up and model load included), the generation time alone (sum over rows of eval.json's seconds_per_image x
images / N processes), images/s, the fast path each row ran on, the speed-up over the first GPU count, and
whether every image file is byte-for-byte that of the first GPU count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def digest(folder: Path) -> dict[str, str]:
    """sha1 of every image file under ``folder``, by its path relative to it."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def card(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="work folder (prompts.txt, gpus1/, gpus2/, ...)")
    ap.add_argument("--prompts", type=int, default=2000, help="number of prompts (shapes-world captions)")
    ap.add_argument(
        "--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to time, first = baseline"
    )
    ap.add_argument("--model", default=None, help="model folder (default: the shipped mini model)")
    ap.add_argument("--methods", nargs="+", default=["unguided", "cfg", "dice"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None, help="cpu for a dry run (processes instead of GPUs)")
    ap.add_argument(
        "--fast", default="graphs", help="fast path (graphs: no compile time that a warm cache would favour)"
    )
    ap.add_argument("--json", default=None, help="write the rows here (default: WORK/study.json)")
    args = ap.parse_args(argv)

    from dicecfg.runs.folder import versions
    from dicecfg.world.data import export_prompts

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pfile = work / "prompts.txt"
    export_prompts(pfile, args.prompts, seed=23)
    rows: list[dict] = []
    base: dict | None = None
    for n in args.gpus:
        out = work / f"gpus{n}"
        shutil.rmtree(out, ignore_errors=True)  # timed from nothing
        cmd = [sys.executable, "-m", "dicecfg.cli", "-q", "eval", "--prompts", str(pfile), "--limit",
               str(args.prompts), "--methods", *args.methods, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--fast", args.fast, "--no-plot", "--out", str(out), "--gpus", str(n)]  # fmt: skip
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--device", args.device] if args.device else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        report = json.loads((out / "eval.json").read_text())
        images = sum(r["n"] for r in report["rows"])
        gen = sum((r["seconds_per_image"] or 0.0) * r["n"] for r in report["rows"]) / n
        files = digest(out / "images")
        row = {
            "gpus": n,
            "card": card(args.device or "cuda"),
            "dtype": json.loads((out / "run.json").read_text())["identity"]["dtype"],
            "versions": report["versions"],
            "command": " ".join(cmd[1:]),
            "prompts": args.prompts,
            "images": images,
            "wall_s": round(wall, 2),
            "generation_s": round(gen, 2),
            "images_per_s": round(images / wall, 2),
            "fast": sorted({r.get("fast") or "?" for r in report["rows"]}),
        }
        if base is None:  # the unrounded times of the first row: a ratio of rounded numbers is not 1 against itself
            base, base_files = {"wall": wall, "gen": gen}, files
        row["speedup_wall"] = round(base["wall"] / wall, 3)
        row["speedup_generation"] = round(base["gen"] / gen, 3) if gen else None
        row["same_images"] = files == base_files
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.json or work / "study.json").write_text(
        json.dumps({"rows": rows, "versions": versions()}, indent=1)
    )
    print("| GPUs | card | images | wall s | generation s | images/s | speed-up (wall) | same images |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['card']} | {r['images']} | {r['wall_s']} | {r['generation_s']} | "
              f"{r['images_per_s']} | {r['speedup_wall']} | {r['same_images']} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
