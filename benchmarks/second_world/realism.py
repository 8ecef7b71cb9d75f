"""Where guidance acts on a world's model: the realism acceptance of the second world (and the first beside it).

For a mini model and its world, on the world's held-out prompts with two seed sets (the project's seeds, and
the same + 10,000,000), 20 DPM-Solver++ steps:
1. unguided sampling and full CFG at each w of a small sweep; w* = the sweep's best all-correct;
2. at w*: CFG on each fifth of the steps alone, on the first k steps (k of 20), on a middle band after
   Kynkaanniemi et al. 2024 (the steps whose sigma lies in (0.28, 5.42], their SD-XL band), Adaptive Guidance
   and Scaling (the other training-free peers);
3. for each row: NFE, all-correct with its standard error, each oracle key, the oracle Frechet distance to
   clean renders of the same scenes, and the share of full CFG's all-correct gain over unguided recovered;
4. with ``--sharpener DIR`` (repeatable): DICE rows on the same images' prompts and seeds, at the sharpener's
   recorded settings and at alpha 1 on every step (the evidence table; not part of the acceptance).
A run re-started with the same ``--json`` reuses the rows already in it (same model, world and n): a cut-off
run resumes, and a later run with ``--sharpener`` adds DICE rows beside the peers' without sampling them again.
``--rows NAME ...`` samples only the named peer rows (and the DICE rows): a comparison of a few rows on another
device, where the images differ from the same seeds; such a run has no acceptance criteria (they need every row).
The acceptance rules (issue 29, fixed before any sharpener is trained on the world; DICE plays no part):
- CFG on the first 10% of the steps recovers at most half of full CFG's gain;
- recovering 95% of the gain needs CFG on at least the first 25% of the steps.

    python benchmarks/second_world/realism.py --model DIR --world shapes-fine --json OUT.json [--n 512]
    python benchmarks/second_world/realism.py --model DIR --world shapes-fine --json OUT.json --sharpener S

Everything goes through ``dicecfg.generate`` and the method objects (one sampling code path).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from dicecfg import generate, load_pipeline
from dicecfg.pipeline import resolve_device
from dicecfg.runs.io import atomic_write_json
from dicecfg.sampling.methods import CFG, AdaptiveGuidance, Dice, Scaling, Unguided
from dicecfg.world.oracle import frechet_distance
from dicecfg.world.worlds import get_world

STEPS = 20
SWEEP = (3.0, 5.0, 7.5)
SEED_SETS = (0, 10_000_000)  # added to each held-out item's own seed
PREFIX_STEPS = (1, 2, 3, 4, 5, 8, 10)  # CFG on the first k of 20 steps
BAND_SIGMA = (0.28, 5.42)  # Kynkaanniemi et al. 2024's SD-XL guidance band (their Table / Fig.; RESEARCH.md)


def step_sigmas(pipe) -> np.ndarray:
    """The sigma at which each of the STEPS steps evaluates the network (the pipeline's scheduler)."""
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    ac = sched.alphas_cumprod.double()
    t = torch.as_tensor(sched.timesteps).long()
    return ((1 - ac[t]) / ac[t]).sqrt().numpy()


def band_interval(sigmas: np.ndarray) -> tuple[int, int]:
    """First and one-past-last step whose sigma lies in BAND_SIGMA (the steps are contiguous)."""
    inside = np.flatnonzero((sigmas > BAND_SIGMA[0]) & (sigmas <= BAND_SIGMA[1]))
    return int(inside[0]), int(inside[-1]) + 1


def sample(pipe, items, method, batch: int) -> tuple[np.ndarray, float]:
    """Images of every item under every seed set (uint8, seed set major), and the NFE per image."""
    images, nfe = [], []
    for offset in SEED_SETS:
        for s in generate(
            pipe,
            [it.prompt for it in items],
            method=method,
            seeds=[it.seed + offset for it in items],
            num_inference_steps=STEPS,
            batch_size=batch,
            progress=False,
        ):
            images.append(s.image)
            nfe.append(s.nfe)
    return np.stack(images), float(np.mean(nfe))


PARTIAL: dict = {"path": None, "key": None, "rows": []}  # written after each row (a cut-off run keeps them)
DONE: dict = {}  # row name -> a row of an earlier run with the same key (reused, not sampled again)
ONLY: set = set()  # --rows: the peer rows to sample (empty: all); the others are left out of the run
SHOWN = {}  # row name -> its first images (seed set A), for a look by eye (--images)
SHOWN_ROWS = ("unguided", "first 2 steps", "first 5 steps", "full")
SHOWN_N = 24


def resume(path: str, key: dict) -> None:
    """Take the rows of an earlier run of the same model, world and n from ``path`` (a cut-off run's too)."""
    if not Path(path).is_file():
        return
    old = json.loads(Path(path).read_text())
    if {k: old.get(k) for k in key} != key:
        raise SystemExit(
            f"{path} holds a run of other settings ({ {k: old.get(k) for k in key} }); give another --json"
        )
    DONE.update({r["row"]: r for r in old["rows"]})
    print(f"reusing {len(DONE)} rows of {path}", flush=True)


def row(name: str, method, pipe, world, items, batch: int, reference: np.ndarray) -> dict | None:
    if ONLY and name not in ONLY and not name.startswith("dice "):
        return None
    if name in DONE:
        out = DONE[name]
        print(f"{name:<28} (reused)  all {out['all']:.3f}", flush=True)
        PARTIAL["rows"].append(out)
        return out
    t = time.monotonic()
    images, nfe = sample(pipe, items, method, batch)
    if name in SHOWN_ROWS or name.startswith("cfg w="):
        SHOWN[name] = images[:SHOWN_N]
    oracle = world.oracle()
    specs = [it.spec for it in items] * len(SEED_SETS)
    scores = oracle.score(images, specs)
    acc = scores["all"]
    out = {
        "row": name,
        "method": repr(method),
        "nfe": nfe,
        "all": float(acc.mean()),
        "se": float(acc.std(ddof=1) / math.sqrt(len(acc))),
        **{k: float(v.mean()) for k, v in scores.items() if k != "all"},
        "fd": frechet_distance(oracle.features(images), reference),
        "seconds": time.monotonic() - t,
    }
    print(
        f"{name:<28} nfe {nfe:5.1f}  all {out['all']:.3f} +- {out['se']:.3f}  fd {out['fd']:.3f}", flush=True
    )
    PARTIAL["rows"].append(out)
    if PARTIAL["path"]:
        atomic_write_json(PARTIAL["path"], {**PARTIAL["key"], "partial": True, "rows": PARTIAL["rows"]})
    return out


def dice_rows(sharpeners: list[str], pipe, world, items, batch: int, reference: np.ndarray) -> list[dict]:
    """DICE at each sharpener's recorded settings, and at alpha 1 on every step where those differ."""
    from dicecfg import Sharpener
    from dicecfg.sampling.methods import recorded_settings

    rows = []
    for path in sharpeners:
        sharp = Sharpener.from_pretrained(path)
        tag = Path(path).name or path
        rec = recorded_settings(sharp)
        shown = ",".join(f"{k}={v:g}" for k, v in rec.items()) or "alpha=1"
        rows.append(row(f"dice {tag} ({shown})", Dice(sharp), pipe, world, items, batch, reference))
        if rec and rec != {"alpha": 1.0, "start": 0.0, "stop": 1.0}:
            every = Dice(sharp, alpha=1.0, start=0.0, stop=1.0)
            rows.append(row(f"dice {tag} (alpha=1 every step)", every, pipe, world, items, batch, reference))
    return rows


def run(model: str, world_name: str, n: int, batch: int, device: str, sharpeners: list[str] = ()) -> dict:
    world = get_world(world_name)
    PARTIAL["key"] = {"model": model, "world": world_name, "n_prompts": n}
    if PARTIAL["path"]:
        resume(PARTIAL["path"], PARTIAL["key"])
    pipe = load_pipeline(model, device=resolve_device(device), dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    items = world.heldout_set(n)
    oracle = world.oracle()
    reference = oracle.features(world.render([it.scene for it in items] * len(SEED_SETS)))
    sigmas = step_sigmas(pipe)
    rows = [row("unguided", Unguided(), pipe, world, items, batch, reference)]
    rows += [row(f"cfg w={w:g}", CFG(guidance_scale=w), pipe, world, items, batch, reference) for w in SWEEP]
    rows = [r for r in rows if r is not None]
    best = max(rows[1:], key=lambda r: r["all"])
    w = float(best["row"].split("=")[1])
    print(f"w* = {w:g}", flush=True)

    def cfg(name: str, start: int, stop: int) -> dict:
        return row(
            name,
            CFG(guidance_scale=w, start=start / STEPS, stop=stop / STEPS),
            pipe,
            world,
            items,
            batch,
            reference,
        )

    rows += [cfg(f"fifth {k + 1} (steps {4 * k}-{4 * k + 3})", 4 * k, 4 * k + 4) for k in range(5)]
    rows += [cfg(f"first {k} steps", 0, k) for k in PREFIX_STEPS]
    b0, b1 = band_interval(sigmas)
    rows.append(cfg(f"band steps {b0}-{b1 - 1}", b0, b1))
    rows.append(row(f"ag w={w:g}", AdaptiveGuidance(guidance_scale=w), pipe, world, items, batch, reference))
    rows.append(row("scaling s=1.2", Scaling(scale=1.2), pipe, world, items, batch, reference))
    rows += dice_rows(list(sharpeners), pipe, world, items, batch, reference)
    rows = [r for r in rows if r is not None]
    base, full = rows[0]["all"], best["all"]
    for r in rows:
        r["recovered"] = (r["all"] - base) / (full - base) if full > base else float("nan")
    criteria = None if ONLY else acceptance(rows, full - base)
    return {
        "model": model,
        "world": world_name,
        "n_prompts": n,
        "seed_sets": list(SEED_SETS),
        "steps": STEPS,
        "w_star": w,
        "sigmas": [float(s) for s in sigmas],
        "band": [b0, b1],
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"torch": torch.__version__},
        "rows": rows,
        "criteria": criteria,
    }


def acceptance(rows: list[dict], gain: float) -> dict:
    """The world's two realism rules from the rows of a whole study."""
    first = {k: next(r for r in rows if r["row"] == f"first {k} steps")["recovered"] for k in PREFIX_STEPS}
    need = min((k for k in PREFIX_STEPS if first[k] >= 0.95), default=None)
    return {
        "gain": gain,
        "first_10pct_recovered": first[2],
        "rule_1_first_10pct_at_most_half": first[2] <= 0.5,
        "steps_for_95pct": need,
        "rule_2_95pct_needs_25pct": need is None or need >= 5,
    }


def table(result: dict) -> str:
    keys = [
        k
        for k in result["rows"][0]
        if k not in ("row", "method", "nfe", "all", "se", "fd", "seconds", "recovered")
    ]
    head = "| row | NFE | all-correct | recovered | " + " | ".join(keys) + " | FD |"
    lines = [head, "|" + "---|" * (5 + len(keys))]
    for r in result["rows"]:
        cells = [f"{r[k]:.3f}" for k in keys]
        lines.append(
            f"| {r['row']} | {r['nfe']:.1f} | {r['all']:.3f} +- {r['se']:.3f} | {r['recovered']:.2f} | "
            + " | ".join(cells)
            + f" | {r['fd']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="mini-model folder (default: the shipped first model)")
    p.add_argument("--world", default="shapes")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", required=True)
    p.add_argument("--images", default=None, help="npz with the first images of a few rows")
    p.add_argument(
        "--sharpener", action="append", default=[], help="add DICE rows of this sharpener (repeatable)"
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=[],
        metavar="NAME",
        help='sample only these peer rows, e.g. unguided "cfg w=5" "first 5 steps" (no acceptance criteria)',
    )
    a = p.parse_args()
    ONLY.update(a.rows)
    known = re.compile(
        r"unguided|cfg w=\S+|fifth [1-5] \(steps \d+-\d+\)|first \d+ steps|band steps \d+-\d+|ag w=\S+|scaling s=\S+"
    )
    unknown = [n for n in ONLY if not known.fullmatch(n)]
    if unknown:
        p.error(f'--rows: no row is named {unknown} (names as the study prints them, e.g. "first 5 steps")')
    if ONLY and not ("unguided" in ONLY and any(n.startswith("cfg w=") for n in ONLY)):
        p.error(
            '--rows needs "unguided" and one full-CFG row ("cfg w=5"): the recovered share is measured on them'
        )
    PARTIAL["path"] = a.json
    result = run(a.model, a.world, a.n, a.batch, a.device, a.sharpener)
    atomic_write_json(a.json, result)
    if a.images and SHOWN:  # rows sampled by this run, beside those an earlier run of the same study kept
        prompts = [it.prompt for it in get_world(a.world).heldout_set(a.n)][:SHOWN_N]
        kept = dict(np.load(a.images)) if Path(a.images).is_file() else {}
        kept.update({k.replace(" ", "_"): v for k, v in SHOWN.items()}, prompts=np.array(prompts))
        np.savez_compressed(a.images, **kept)
    print(table(result))
    print(json.dumps(result["criteria"]))


if __name__ == "__main__":
    main()
