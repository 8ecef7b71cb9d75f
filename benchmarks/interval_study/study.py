"""Where guidance acts, and a DICE edit shaped over the trajectory: the study on the mini model (README.md here).

    python benchmarks/interval_study/study.py train  --work W [--variants e2,e3,...] [--steps 800]
    python benchmarks/interval_study/study.py peers  --work W --json F          # CFG intervals, AG, unguided, CFG
    python benchmarks/interval_study/study.py tune   --work W --sharpener S --json F  # alpha x stop on validation
    python benchmarks/interval_study/study.py final  --work W --json F --tuned F1 F2 ...  # the rule, then held-out

``train`` fine-tunes the shipped sharpener (``--init-from mini``) once per variant, all at once on one GPU
(``benchmarks/recipe_study/recipe_study.py train`` does the work: teacher pool made once, each run bounded in time).
``peers`` and ``tune`` score through ``dicecfg.evaluation.tune.score_rows`` (the code of `dice tune`): oracle
all-correct and Frechet distance on the validation set with two seed sets and on the held-out set with the
project's seeds (A) and a second seed set (B). ``final`` applies the selection rule of README.md to the tuned
candidates (validation only) and scores the chosen settings of every variant on held-out A and B.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "recipe_study"))  # recipe_study.py: the shared training driver

FT = ["--init-from", "mini", "--lr", "3e-4"]  # every variant fine-tunes the shipped sharpener
NEG = [
    "--negative-prompts",
    "NEGATIVES",
    "--negative-prob",
    "0.25",
]  # keep what it does with negative prompts
BASE = ["--no-shared-timestep", "--lr-schedule", "cosine", "--warmup", "0.05",
        "--arch", "block", "--inner-dim", "256", "--heads", "4", "--grad-clip", "1", *NEG, *FT]  # fmt: skip
# On the mini model's 20-step schedule the timesteps are 941, 894, 847, 800, 753, ...: --t-range 0.87 1 covers
# the first 2 steps, 0.82 1 the first 3, 0.73 1 the first 5.
VARIANTS: dict[str, list[str]] = {
    "e2": [*BASE, "--t-range", "0.87", "1"],
    "e3": [*BASE, "--t-range", "0.82", "1"],
    "e3-w7": [*BASE, "--t-range", "0.82", "1", "--guidance-scale", "7.5"],  # supervision beyond CFG at w=5
    "e3-blocks": [*BASE, "--t-range", "0.82", "1", "--time-edges", "918", "871"],  # one edit per step
    "e5": [*BASE, "--t-range", "0.73", "1"],
    "full-x0": [*BASE, "--loss-weighting", "x0"],  # every timestep, the noisy ones weighted up
}
PEERS = [
    "unguided", "cfg",
    "cfg:stop=0.05", "cfg:stop=0.1", "cfg:stop=0.15", "cfg:stop=0.25",  # the first 1, 2, 3, 5 steps
    "cfg:start=0.05,stop=0.3", "cfg:start=0.25,stop=0.5",  # two middle intervals
    "cfg:start=0.5",  # the last half
    "ag:threshold=0.99", "ag:threshold=0.995",  # Adaptive Guidance at two thresholds
]  # fmt: skip
ALPHAS, STOPS = (1.0, 1.5, 2.0), (0.05, 0.1, 0.15, 0.25)
SETS = ("validation", "heldout-a", "heldout-b")


def prompt_sets(names, n: int, validation_seed_sets: int = 2):
    """name -> (Prompts, seed sets): validation with two seed sets (by default); held-out A (the project's seeds)
    and B (+10M), one each."""
    from dicecfg.evaluation.prompt_sets import PromptSet
    from dicecfg.evaluation.tune import SEED_SET_STRIDE
    from dicecfg.world import heldout_set, validation_set

    out = {}
    for name in names:
        items = validation_set(n) if name == "validation" else heldout_set(n)
        shift = SEED_SET_STRIDE if name == "heldout-b" else 0
        ps = PromptSet.of_world(items, name, seed_shift=shift)
        out[name] = (ps, validation_seed_sets if name == "validation" else 1)
    return out


def score(methods: dict, sets: list[str], n: int, batch: int, validation_seed_sets: int = 2) -> list[dict]:
    """Every method on every set (``score_rows``): all-correct, its SE, FD and NFE per set."""
    from dicecfg.evaluation.tune import score_rows

    pipe = mini()
    rows = {k: {"row": k, "spec": m.spec, "method": m.name, "setting": m.setting} for k, m in methods.items()}
    for name, (ps, k) in prompt_sets(sets, n, validation_seed_sets).items():
        t0 = time.time()
        for r in score_rows(pipe, methods, ps, seed_sets=k, batch_size=batch, progress=False):
            rows[r["row"]][name] = {x: r[x] for x in ("score", "stderr", "fd", "nfe", "all_correct_per_set")}
        print(f"{name}: {len(methods)} rows in {time.time() - t0:.0f} s", flush=True)
    return list(rows.values())


def mini():
    import torch

    from dicecfg import load_pipeline

    return load_pipeline(None, device="cuda" if torch.cuda.is_available() else "cpu")


def sharpener_at(path: str):
    from dicecfg import Sharpener

    return Sharpener.from_pretrained(path)


def train(a: argparse.Namespace) -> None:
    import recipe_study

    recipe_study.VARIANTS.update(VARIANTS)
    recipe_study.train(a)


def peers(a: argparse.Namespace) -> None:
    from dicecfg.sampling.spelling import as_method

    write(
        a.json, score({p: as_method(p) for p in PEERS}, a.sets.split(","), a.n, a.batch_size, a.seed_sets), a
    )


def tune(a: argparse.Namespace) -> None:
    """One sharpener's candidates on validation (the same grid as `dice tune`, and its full-trajectory row)."""
    from dicecfg.evaluation.tune import candidates
    from dicecfg.sampling.methods import Dice

    sharp = sharpener_at(a.sharpener)
    methods = {c.spec: c for c in candidates(sharp, a.alphas, a.stops)}
    if a.full:
        methods[Dice(sharp, 1.0, 0.0, 1.0).spec] = Dice(sharp, 1.0, 0.0, 1.0)
    rows = score(methods, ["validation"], a.n, a.batch_size)
    for r in rows:
        r["sharpener"] = a.sharpener
    write(a.json, rows, a)


def chosen(rows: list[dict]) -> dict:
    """The selection rule (README.md), on validation only: the highest pooled all-correct; candidates within one
    standard error of it are tied; a tie goes to the lower validation FD, then the earlier stop, the smaller
    alpha."""
    from dicecfg.sampling.spelling import parse_method

    top = max(rows, key=lambda r: r["validation"]["score"])
    tied = [
        r
        for r in rows
        if r["validation"]["score"] >= top["validation"]["score"] - top["validation"]["stderr"]
    ]

    def order(r: dict) -> tuple:
        s = parse_method(r["spec"])[1]
        return r["validation"]["fd"], s.get("stop", 1.0), s.get("alpha", 1.0)

    return min(tied, key=order)


def final(a: argparse.Namespace) -> None:
    """Per sharpener its chosen setting, and the overall choice, all by the rule on validation; then every
    sharpener's chosen setting on held-out A and B (reported, never chosen on)."""
    from dicecfg.evaluation.tune import record_settings
    from dicecfg.sampling.methods import Dice
    from dicecfg.sampling.spelling import parse_method

    tuned = [r for f in a.tuned if Path(f).is_file() for r in json.loads(Path(f).read_text())["rows"]]
    by_sharpener: dict[str, list[dict]] = {}
    for r in tuned:
        by_sharpener.setdefault(r["sharpener"], []).append(r)
    picks = {name: chosen(rows) for name, rows in by_sharpener.items()}
    overall = chosen(list(picks.values()))
    print("overall choice (validation):", overall["sharpener"], overall["spec"], flush=True)
    methods = {}
    for name, r in picks.items():
        _, settings = parse_method(r["spec"])
        sharp = sharpener_at(name)
        if Path(name).is_dir():  # each trained variant records its chosen settings (the shipped one stays)
            record_settings(name, sharp, settings)
        methods[f"{name}|{r['spec']}"] = Dice(sharp, **settings)
    rows = score(methods, a.sets.split(","), a.n, a.batch_size)
    for r in rows:
        name = r["row"].split("|")[0]
        r |= {
            "sharpener": name,
            "validation": picks[name]["validation"],
            "chosen": name == overall["sharpener"],
        }
    write(a.json, rows, a, extra={"overall": {"sharpener": overall["sharpener"], "spec": overall["spec"]}})


def write(path: str, rows: list[dict], a: argparse.Namespace, extra: dict | None = None) -> None:
    import torch

    meta = {"card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "n": a.n,
            "torch": torch.__version__, "command": " ".join(sys.argv)}  # fmt: skip
    Path(path).write_text(json.dumps({"meta": meta, **(extra or {}), "rows": rows}, indent=1))
    for r in rows:
        cells = [f"{s}: {r[s]['score']:.3f} / {r[s]['fd']:.3f} ({r[s]['nfe']} NFE)" for s in SETS if s in r]
        print(f"| {r.get('sharpener', '-')} | {r['spec']} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--work", required=True)
    t.add_argument("--variants", default=",".join(VARIANTS))
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--prompts", type=int, default=40000, help="training prompts to export")
    t.add_argument("--images", type=int, default=0)
    t.add_argument("--train-seconds", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--pool-batch-size", type=int, default=1024)
    t.add_argument("--eval-pairs", type=int, default=256)
    t.add_argument("--pool", type=int, default=8192)
    for name in ("peers", "tune", "final"):
        e = sub.add_parser(name)
        e.add_argument("--work", required=True)
        e.add_argument("--json", required=True)
        e.add_argument("--n", type=int, default=512)
        e.add_argument("--batch-size", type=int, default=512)
        if name == "peers":
            e.add_argument("--sets", default=",".join(SETS))
            e.add_argument("--seed-sets", type=int, default=1, help="seed sets of the validation set")
        if name == "tune":
            e.add_argument("--sharpener", required=True)
            e.add_argument("--alphas", type=float, nargs="+", default=ALPHAS)
            e.add_argument("--stops", type=float, nargs="+", default=STOPS)
            e.add_argument(
                "--full",
                action=argparse.BooleanOptionalAction,
                default=True,
                help="and alpha 1 on every step",
            )
        if name == "final":
            e.add_argument("--tuned", nargs="+", required=True)
            e.add_argument("--sets", default="heldout-a,heldout-b")
    a = ap.parse_args()
    {"train": train, "peers": peers, "tune": tune, "final": final}[a.cmd](a)


if __name__ == "__main__":
    main()
