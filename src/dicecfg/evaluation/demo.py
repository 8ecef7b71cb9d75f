"""`dice demo`: unguided, CFG, the best cheap training-free peer (CFG on the first steps only) and DICE side by
side on held-out shapes-world prompts, on CPU, in about a minute.

The prompts are the first N of the held-out set with their fixed seeds, so its alignment numbers are those of
``dice eval --limit N`` on the same settings (the summary names that command; tests/test_shipped.py checks the
agreement). Every method samples every batch through ``generate()``: after one untimed warm-up call per method,
the methods take turns batch by batch (the order rotating), so each method's seconds per image are measured the
same way. The oracle scores each image against the scene its prompt describes. Writes ``demo.json`` and an
annotated grid of a readable subset of the prompts (``DemoJob.shown``; :func:`grid_columns` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..flags import Checked, opt
from ..pipeline import default_sharpener, model_option, sharpener_option
from ..runs.io import atomic_write_json, check_own_files, read_record
from ..runs.jobs import job_pipeline, stderr
from ..sampling.generate import Sample, generate
from ..sampling.grid import save_png
from ..sampling.methods import CFG, PEER_STOP, Dice, Method, Unguided
from ..sharpener import Sharpener
from ..world.heldout import HELDOUT_SIZE
from ..world.worlds import DEFAULT_WORLD, WORLD_NAMES
from .evaluate import alignment_means

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoJob(Checked):
    """`dice demo`: which held-out prompts, how many steps, where to write the grid."""

    prompts: int = opt(
        48,
        f"the first N held-out prompts, with their fixed seeds (= dice eval --limit N; {HELDOUT_SIZE}: all)",
        metavar="N",
        min=1,
        max=HELDOUT_SIZE,
    )
    shown: int = opt(
        8, "prompts drawn in the grid (up to half where the methods disagree)", metavar="K", min=1
    )
    steps: int = opt(20, "DPM-Solver++ steps for every method", min=1)
    guidance_scale: float = opt(5.0, "CFG scale w (the paper's)", min=1.0)
    peer_stop: float = opt(
        PEER_STOP,
        "the training-free peer row: CFG on the first steps, up to this fraction of them (0.1: 2 of 20; the "
        "best cheap peer measured on the mini model, BENCHMARKS.md)",
        min=0.0,
        max=1.0,
    )
    batch_size: int = opt(16, "images per pipeline call (pixels vary with it by 1/255 at most)", min=1)
    world: str = opt(
        DEFAULT_WORLD,
        "the world whose held-out prompts the demo samples; without --model, its shipped model "
        "(shapes: the mini model; shapes-fine: mini-fine)",
        choices=WORLD_NAMES,
    )
    model: str | None = model_option()
    sharpener: str | None = sharpener_option()
    out: str = opt("dice-demo", "folder for grid.png and demo.json", path="out_dir")
    device: str = opt("cpu", "cuda, cuda:1, cpu, ... (the demo is made for the CPU)")
    progress: bool = opt(True, "progress bars", cli=False)


def sample_in_turns(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    methods: dict[str, Method],
    *,
    batch_size: int,
    progress: bool = True,
    **generate_kwargs: Any,
) -> dict[str, list[Sample]]:
    """Every method on every batch through ``generate()``, timed alike: first one untimed one-step call per
    method on the first batch (allocations and kernel set-up of those shapes are paid there), then the methods
    take turns batch by batch, the order rotating, so a slow spell of the machine falls on all of them."""
    prompts, seeds, keys = list(prompts), list(seeds), list(methods)
    generate_kwargs |= {"batch_size": batch_size, "progress": False}
    first = slice(0, batch_size)
    # The warm-up's one step gives an interval no guided step; that is expected here, so generate() stays quiet.
    quiet = logging.getLogger(generate.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for m in keys:
            warm = generate_kwargs | {"num_inference_steps": 1}
            for _ in generate(pipe, prompts[first], method=methods[m], seeds=seeds[first], **warm):
                pass
    finally:
        quiet.setLevel(level)
    out: dict[str, list[Sample]] = {m: [] for m in keys}
    bar = tqdm(total=len(prompts) * len(methods), desc="demo", unit="img", disable=not progress)
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            sl = slice(start, start + batch_size)
            for m in keys[b % len(keys) :] + keys[: b % len(keys)]:
                out[m] += generate(pipe, prompts[sl], method=methods[m], seeds=seeds[sl], **generate_kwargs)
                bar.update(len(prompts[sl]))
    finally:
        bar.close()
    return out


def paired(correct: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    """A method against a baseline on the same prompts and seeds: the difference in all-correct and its
    standard error (of the per-prompt differences), and on how many prompts it fixed or broke the baseline."""
    d = correct - base
    return {
        "diff": float(d.mean()),
        "stderr": stderr(d),
        "fixed": int((d > 0).sum()),
        "broken": int((d < 0).sum()),
    }


def grid_columns(correct: Sequence[np.ndarray], k: int) -> tuple[list[int], int]:
    """The grid's prompts, in held-out order: the first ceil(k/2) prompts on which the methods' verdicts differ,
    then the first ones on which they all agree, k in all (one kind short: more of the other). Returns the
    indices and how many prompts the methods disagree on."""
    v = np.stack(correct)
    differ = np.flatnonzero(v.min(0) != v.max(0))
    agree = np.flatnonzero(v.min(0) == v.max(0))
    k = min(k, v.shape[1])
    n_differ = min(len(differ), max((k + 1) // 2, k - len(agree)))
    return sorted(int(i) for i in (*differ[:n_differ], *agree[: k - n_differ])), len(differ)


def eval_command(job: DemoJob) -> str:
    """The `dice eval` command that scores the demo's prompts, seeds and settings (the same numbers)."""
    methods = (
        f"--methods unguided cfg cfg:stop={job.peer_stop:g} dice"
        if job.peer_stop
        else "--methods unguided cfg dice"
    )
    parts = ["dice eval", f"--limit {job.prompts}", methods, f"--steps {job.steps}"]
    parts += [
        f"--cfg-scales {job.guidance_scale:g}",
        f"--batch-size {job.batch_size}",
        f"--device {job.device}",
    ]
    parts += [f"--model {demo_model(job)}"] if job.model or job.world != DEFAULT_WORLD else []
    parts += [f"--sharpener {job.sharpener}"] if job.sharpener else []
    return " ".join([*parts, "--out runs/eval-demo"])


def demo_methods(job: DemoJob, sharpener: Sharpener) -> dict[str, Method]:
    """The demo's rows by key, in order: unguided, CFG, "peer" (CFG on the first steps only; left out at
    --peer-stop 0), DICE (with the sharpener's recorded settings)."""
    methods = {"unguided": Unguided(), "cfg": CFG(job.guidance_scale)}
    if job.peer_stop > 0:
        methods["peer"] = CFG(job.guidance_scale, stop=job.peer_stop)
    return methods | {"dice": Dice(sharpener)}


DEMO_FILES = ("demo.json", "grid.png")  # what `dice demo` writes into --out; demo.json is its record


def check_demo_folder(out: Path) -> None:
    """Refuse an --out folder whose demo.json / grid.png were not written by `dice demo` (they would be replaced);
    a folder of an earlier demo is the demo's own: it is written again."""
    record = read_record(out / "demo.json")
    ours = record is not None and {"job", "prompts", "seeds", "methods"} <= set(record)  # every version of it
    check_own_files(out, DEMO_FILES, command="demo", ours=ours)


def demo_model(job: DemoJob) -> str | None:
    """The model the demo samples: --model, else the shipped model of --world; a model of another world than
    --world is refused (its oracle could not judge the world's prompts)."""
    from ..assets import MODELS
    from ..metrics.world import recorded_world, world_of_model

    if job.model is None:
        shipped = [name for name, folder in MODELS.items() if recorded_world(folder) == job.world]
        if not shipped:
            raise InputError(
                f"--world {job.world}: its mini model is not shipped with this version (docs/mini_model.md, "
                "'The second mini model', trains it); pass --model FOLDER of one."
            )
        return None if shipped[0] == "mini" else shipped[0]
    if (world := world_of_model(job.model)) != job.world:
        raise InputError(f"--model {job.model} is a model of the {world} world; give --world {world}.")
    return job.model


def run_demo(job: DemoJob) -> dict[str, Any]:
    """Run the demo; returns the summary that is also written to ``out/demo.json``."""
    from ..families import check_compatible
    from ..metrics.world import alignment
    from ..world.worlds import get_world
    from .report import demo_grid

    check_demo_folder(Path(job.out))
    world = get_world(job.world)
    model = demo_model(job)
    items = world.heldout_set(job.prompts)
    prompts, seeds = [it.prompt for it in items], [it.seed for it in items]
    name = default_sharpener(model, job.sharpener)
    if name is None:
        raise InputError("dice demo with a model of your own needs its sharpener (sharpener=...).")
    sharp = Sharpener.from_pretrained(name)  # the small file first: a bad path fails before the model loads
    pipe = job_pipeline(model, job.device)
    check_compatible(pipe, sharp)
    # each row as it acts at --steps: an interval with no guided step there is labelled by what runs
    methods = {key: m.acting(job.steps) for key, m in demo_methods(job, sharp).items()}
    samples = sample_in_turns(
        pipe,
        prompts,
        seeds,
        methods,
        batch_size=job.batch_size,
        progress=job.progress,
        num_inference_steps=job.steps,
    )
    oracle, specs = world.oracle(), [it.spec for it in items]
    images = {m: np.stack([s.image for s in ss]) for m, ss in samples.items()}
    scores = {m: alignment(images[m], specs, oracle) for m in methods}
    base = scores["unguided"]["all"]
    table = []
    for m in methods:
        s, first = scores[m], samples[m][0]
        table.append(
            {
                "method": m,
                "params": first.params,
                "setting": methods[m].setting,
                "nfe": first.nfe,
                "seconds_per_image": float(np.mean([x.seconds for x in samples[m]])),
                **alignment_means(s),
                "stderr": stderr(s["all"]),
                "correct": s["all"].astype(int).tolist(),
                "failed": [[k for k in s if k != "all" and not s[k][i]] for i in range(len(items))],
                **({"vs_unguided": paired(s["all"], base)} if m != "unguided" else {}),
            }
        )
    speed = {r["method"]: r["seconds_per_image"] for r in table}
    shown, disagree = grid_columns([scores[m]["all"] for m in methods], job.shown)
    out = Path(job.out)
    summary = {
        "job": asdict(job),
        "rule": f"the first {len(items)} held-out prompts with their fixed seeds",
        "prompts": prompts,
        "seeds": seeds,
        "methods": table,
        "cfg_dice_time_ratio": speed["cfg"] / speed["dice"],
        "shown": shown,
        "disagree": disagree,
        "eval_command": eval_command(job),
        "grid": str(out / "grid.png"),
    }
    save_png(demo_grid(summary, images), out / "grid.png")
    atomic_write_json(out / "demo.json", summary)
    return summary
