"""The recipe study: train sharpener variants for the mini model side by side, then score them.

    python benchmarks/recipe_study/recipe_study.py train --work W --variants paper,per-sample-t,... [--steps 1500]
    python benchmarks/recipe_study/recipe_study.py eval  --work W --variants ... [--sets validation,heldout-a,heldout-b]

``train`` exports the training prompts (never a held-out combination), makes one teacher pool (the model's
own CFG samples) and copies it into every teacher-mode run folder, then runs every variant's `dice train` at
once as its own process (the mini model leaves most of a GPU idle), each bounded by --train-seconds (SIGTERM:
it checkpoints; the same command resumes). ``eval`` samples every variant and the baselines (unguided, CFG,
scaling) on the sets through ``generate()`` and scores them with the oracle: all-correct, per attribute and
the Frechet distance in oracle features. Recipes are chosen on the ``validation`` set (fresh training-
distribution scenes with their own seeds); the held-out set, with the project's seeds (``heldout-a``) and a
second seed set (``heldout-b``), is reported, never chosen on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MINI = "src/dicecfg/assets/mini-model"
COMMON = [  # every variant: L1 as the paper, lr 5e-4 (the shipped sharpener's), w=5
    "--lr", "5e-4", "--guidance-scale", "5", "--loss", "l1",
    "--eval-every", "250", "--checkpoint-every", "250", "--log-every", "50",
]  # fmt: skip
BLOCK = ["--arch", "block", "--inner-dim", "256", "--heads", "4", "--grad-clip", "1"]
SCHEDULE = ["--lr-schedule", "cosine", "--warmup", "0.05"]
VARIANTS: dict[str, list[str]] = {
    "paper": [],  # the paper's recipe: one t per batch, constant lr, the paper's network
    "per-sample-t": ["--no-shared-timestep"],
    "per-sample-t+cosine": ["--no-shared-timestep", *SCHEDULE],
    "block": ["--no-shared-timestep", *SCHEDULE, *BLOCK],
    "block+x0": ["--no-shared-timestep", *SCHEDULE, *BLOCK, "--loss-weighting", "x0"],
    "block+relative": ["--no-shared-timestep", *SCHEDULE, *BLOCK, "--loss-weighting", "relative"],
    "block+images": ["--no-shared-timestep", *SCHEDULE, *BLOCK, "--xt-source", "images"],
    "block+shared-t": [*SCHEDULE, *BLOCK],
    # c_neg is a random other training caption for half of the samples, "" for the rest (dice train
    # --negative-prompts); NEGATIVES stands for the exported file
    "block+negatives": ["--no-shared-timestep", *SCHEDULE, *BLOCK, "--negative-prompts", "NEGATIVES"],
    "block+negatives25": [
        "--no-shared-timestep",
        *SCHEDULE,
        *BLOCK,
        "--negative-prompts",
        "NEGATIVES",
        "--negative-prob",
        "0.25",
    ],
    "block-long": ["--no-shared-timestep", *SCHEDULE, *BLOCK],  # "block" again, in a folder of its own
    "block-4k": ["--no-shared-timestep", *SCHEDULE, *BLOCK],  # and again
    "block+negatives25-4k": [
        "--no-shared-timestep",
        *SCHEDULE,
        *BLOCK,
        "--negative-prompts",
        "NEGATIVES",
        "--negative-prob",
        "0.25",
    ],
}
SEED_B = 10_000_000  # the second seed set: item i of the held-out set sampled with seed + SEED_B
ATTRS = ("count", "shape", "colour", "size", "relation", "background")


def run(cmd: list[str], **kw) -> subprocess.Popen:
    print("+", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, **kw)


def train(a: argparse.Namespace) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "dicecfg.cli", "-q"]
    common = [*COMMON, "--batch-size", str(a.batch_size), "--eval-pairs", str(a.eval_pairs)]
    teacher = ["--xt-source", "teacher", "--teacher-pool", str(a.pool)]
    prompts = work / "prompts.txt"
    if not prompts.is_file():
        from dicecfg.world.data import export_prompts

        export_prompts(prompts, a.prompts, seed=21)
    negatives = work / "negatives.txt"
    if not negatives.is_file():
        from dicecfg.world.data import export_prompts

        export_prompts(negatives, 20000, seed=22)
    names = a.variants.split(",")
    images = work / "images"
    maker = None
    if any("images" in VARIANTS[n] for n in names) and not images.is_dir():
        code = "import sys; from dicecfg.world.data import export_image_folder as e\n"
        code += "if __name__ == '__main__': e(sys.argv[1], int(sys.argv[2]), seed=7, workers=12)"
        maker = run([sys.executable, "-c", code, str(images), str(a.images)])
    pool = work / "pool" / "teacher_pool.safetensors"
    if not pool.is_file():  # one pool for all teacher-mode variants (it depends on none of their options)
        t0 = time.time()
        subprocess.run(
            [*py, "train", "--model", MINI, "--prompts", str(prompts), *common, *teacher, "--steps", "1",
             "--batch-size", str(a.pool_batch_size),
             "--out", str(work / "pool")], check=True)  # fmt: skip
        print(f"teacher pool: {time.time() - t0:.0f} s", flush=True)
    if maker is not None:
        maker.wait()
    procs = {}
    for n in names:
        out = work / n
        out.mkdir(exist_ok=True)
        flags = [str(negatives) if f == "NEGATIVES" else f for f in VARIANTS[n]]
        if "images" in flags:
            source = ["--images", str(images)]
        else:
            source = ["--prompts", str(prompts), *teacher]
            if not (out / "teacher_pool.safetensors").is_file():
                shutil.copy(pool, out / "teacher_pool.safetensors")
        cmd = ["timeout", "-s", "TERM", str(a.train_seconds), *py, "train", "--model", MINI, *source, *common]
        cmd += [*flags, "--steps", str(a.steps), "--out", str(out)]
        procs[n] = (
            run(cmd, stdout=open(work / f"{n}.train.log", "a"), stderr=subprocess.STDOUT),
            time.time(),
        )
    for n, (p, t0) in procs.items():
        rc = p.wait()
        print(f"{n}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
    for n in names:
        stats = [json.loads(x) for x in (work / n / "stats.jsonl").read_text().splitlines() if x.strip()]
        ev = [(r["step"], round(r["eval_loss"], 1)) for r in stats if "eval_loss" in r]
        sps = sorted(r["samples_per_s"] for r in stats if "samples_per_s" in r)
        print(
            f"{n}: held-out loss {ev[0][1]} -> {ev[-1]} ; median samples/s {sps[len(sps) // 2]:.0f}",
            flush=True,
        )


def sharpener_of(run_dir: Path, pipe):
    """The run's final sharpener, or its last checkpoint's weights when training stopped early."""
    from safetensors.torch import load_file

    from dicecfg import Sharpener
    from dicecfg.families import family_of

    if (run_dir / "model.safetensors").is_file():
        return Sharpener.from_pretrained(str(run_dir)), None
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    fam = family_of(pipe)
    sharp = Sharpener(fam.dim(pipe), cfg["inner_dim"], cfg["heads"], arch=cfg.get("arch", "paper"))
    state = load_file(str(run_dir / "checkpoint.safetensors"))
    sharp.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    from safetensors import safe_open

    with safe_open(str(run_dir / "checkpoint.safetensors"), "pt") as f:
        step = int(f.metadata()["step"])
    return sharp.eval(), step


def item_sets(names: list[str], n: int):
    from dataclasses import replace

    from dicecfg.world import heldout_set, validation_set

    sets = {}
    for s in names:
        if s == "validation":
            sets[s] = validation_set(n)
        elif s == "heldout-a":
            sets[s] = heldout_set(n)
        elif s == "heldout-b":
            sets[s] = [replace(it, seed=it.seed + SEED_B) for it in heldout_set(n)]
    return sets


def evaluate(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from dicecfg import Sharpener, load_pipeline
    from dicecfg.evaluation.evaluate import sample_and_score
    from dicecfg.metrics.world import oracle_frechet
    from dicecfg.world import Oracle

    work = Path(a.work)
    pipe = load_pipeline(MINI, device="cuda" if torch.cuda.is_available() else "cpu")
    oracle = Oracle()
    sets = item_sets(a.sets.split(","), a.n)
    rows = []
    methods: list[tuple[str, str, dict, object, object]] = []
    if a.baselines:
        methods += [
            ("unguided", "unguided", {}, None, None),
            ("cfg w=5", "cfg", {"guidance_scale": 5.0}, None, None),
        ]
        methods += [
            (f"scaling s={s}", "scaling", {"scale": float(s)}, None, None) for s in a.scales.split(",")
        ]
        methods += [("shipped sharpener", "dice", {}, Sharpener.from_pretrained("mini"), None)]
    for n in [v for v in a.variants.split(",") if v]:
        path = Path(n) if os.sep in n else work / n
        sharp, step = sharpener_of(path, pipe)
        methods.append((path.name, "dice", {}, sharp, step))
    for label, method, kw, sharp, step in methods:
        row = {"row": label, "method": method, **kw}
        if sharp is not None:
            row["params"] = sum(p.numel() for p in sharp.parameters())
            row["train_steps"] = step or sharp.config.get("train_steps")
        t0 = time.time()
        for set_name, items in sets.items():
            images, _, score = sample_and_score(
                pipe,
                items,
                method,
                oracle=oracle,
                sharpener=sharp,
                batch_size=a.batch_size,
                progress=False,
                **kw,
            )
            row[set_name] = {k: float(np.mean(v)) for k, v in score.items()}
            row[set_name]["fd"] = oracle_frechet(images, [it.scene for it in items], oracle)
        row["eval_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "n": a.n,
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))
    cols = list(sets)
    print("| row | steps | " + " | ".join(f"{c} all / FD" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]['all']:.3f} / {r[c]['fd']:.3f}" for c in cols]
        print(f"| {r['row']} | {r.get('train_steps', '-')} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--work", required=True)
    t.add_argument("--variants", default=",".join(VARIANTS))
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--prompts", type=int, default=40000, help="training prompts to export")
    t.add_argument("--images", type=int, default=60000, help="training renders for image-mode variants")
    t.add_argument("--train-seconds", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--pool-batch-size", type=int, default=1024, help="batch of the teacher pool's sampling")
    t.add_argument("--eval-pairs", type=int, default=256, help="held-out (x_0, t, noise) tuples of each run")
    t.add_argument("--pool", type=int, default=16384, help="teacher CFG samples, shared by the variants")
    e = sub.add_parser("eval")
    e.add_argument("--work", required=True)
    e.add_argument("--variants", default=",".join(VARIANTS), help="run names under --work, or paths")
    e.add_argument("--sets", default="validation,heldout-a,heldout-b")
    e.add_argument("--n", type=int, default=512)
    e.add_argument("--scales", default="1.1,1.2,1.5")
    e.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json")
    a = ap.parse_args()
    train(a) if a.cmd == "train" else evaluate(a)


if __name__ == "__main__":
    main()
