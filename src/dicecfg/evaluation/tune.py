"""`dice tune`: measure a sharpener's sampling settings (alpha and the interval of steps it acts on) on validation
prompts of its own model, and record the best in the sharpener, so that ``Dice(sharpener)`` and ``method="dice"``
use them (docs/method.md, "Where guidance acts").

Why: DICE's edit acts where guidance acts. On the shapes world it buys its whole gain in the first steps and
only costs fidelity afterwards (BENCHMARKS.md); where that holds on another model is a fact of that model, so it
is measured there, not copied from the shapes world.

What is measured, for every candidate (alpha x stop, start 0) on the same prompts and seeds:
- on a shapes-world model (every prompt in the world's grammar): the oracle's all-correct rate (the score) and,
  for the held-out or validation sets, the oracle Frechet distance;
- on any other model: PSNR of each image against the CFG image of the same seed (the score: how closely the
  guided result is reproduced at one pass per step) and SSIM.
Several seed sets (``seed_sets``) pool more images per candidate. The best candidate by the score is recorded;
candidates within one standard error of the best count as tied, and a tie goes to the lower FD (world), then to
the earlier stop (the smaller edit). CFG on the whole trajectory and on its first steps are measured beside them,
so the table shows what the settings have to beat.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..flags import Checked, opt
from ..metrics.world import reads_shapes_world
from ..pipeline import device_option, dtype_option, model_option, sharpener_option
from ..runs.io import atomic_write_json, atomic_write_text, check_own_files, read_record
from ..sampling.generate import generate
from ..sampling.methods import CFG, Dice, Method
from ..sharpener import Sharpener

log = logging.getLogger(__name__)
SEED_SET_STRIDE = 10_000_000  # seed set k samples item i with its seed + k * SEED_SET_STRIDE


@dataclass(frozen=True)
class TuneJob(Checked):
    """`dice tune`: the sharpener, the validation prompts, the candidate settings, and whether to record them."""

    sharpener: str | None = sharpener_option()
    model: str | None = model_option()
    prompts_file: str | None = opt(
        None,
        "validation prompts of your model, text or JSONL (default with a shapes-world model: the world's "
        "validation set, never the held-out one)",
        flag="--prompts",
        metavar="FILE",
        path="file",
    )
    limit: int = opt(512, "use the first N prompts", min=1, max=100_000)
    seed: int = opt(0, "prompt i gets seed + i (validation items carry their own seeds)", min=0, max=2**40)
    seed_sets: int = opt(2, "seed sets per prompt (more images per candidate, smaller errors)", min=1, max=16)
    alphas: tuple[float, ...] = opt((1.0, 1.5, 2.0), "edit strengths to try")
    stops: tuple[float, ...] = opt(
        (0.05, 0.1, 0.15, 0.25, 1.0), "interval ends to try (fractions of the steps; 1: every step)"
    )
    steps: int = opt(20, "sampling steps", min=1, max=1000)
    guidance_scale: float | None = opt(
        None, "w of the CFG rows (default: the sharpener's teacher w)", min=1.0
    )
    negative_stop: float = opt(
        1.0,
        "interval end recorded for images with a negative prompt (not measured: a negative prompt acts only "
        "through the edit; 1: every step, as the sharpener was trained with negatives)",
        min=0.01,
        max=1.0,
    )
    batch_size: int = opt(64, "images per pipeline call (pixels vary with it by 1/255 at most)", min=1)
    write: bool = opt(True, "record the best settings in the sharpener folder (--no-write: measure only)")
    out: str | None = opt(None, "also write tune.json and tune.md here", path="out_dir")
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    progress: bool = opt(True, "progress bars", cli=False)


@dataclass
class Prompts:
    """Validation prompts and their seeds, with the world's specs and scenes when the oracle can judge them."""

    prompts: list[str]
    seeds: list[int]
    specs: list | None = None
    scenes: list | None = None


def validation_prompts(job: TuneJob) -> Prompts:
    """The prompts of a tuning run: ``--prompts``, else the shapes world's validation set."""
    from ..metrics.world import world_specs

    if job.prompts_file:
        from ..sampling.prompts import collect_prompts

        prompts = collect_prompts((), job.prompts_file)[: job.limit]
        return Prompts(prompts, [job.seed + i for i in range(len(prompts))], world_specs(prompts))
    from ..world import validation_set

    items = validation_set(job.limit)
    return Prompts([it.prompt for it in items], [it.seed for it in items], [it.spec for it in items],
                   [it.scene for it in items])  # fmt: skip


def candidates(sharpener: Sharpener, alphas: Sequence[float], stops: Sequence[float]) -> list[Dice]:
    """Every (alpha, stop) as a ``Dice`` from step 0 (the edit acts where guidance acts: first)."""
    if not alphas or not stops:
        raise InputError("dice tune needs at least one alpha and one stop.")
    return [Dice(sharpener, alpha=a, start=0.0, stop=s) for s in stops for a in alphas]


def score_rows(
    pipe: Any,
    methods: dict[str, Method],
    ps: Prompts,
    *,
    seed_sets: int = 1,
    steps: int = 20,
    batch_size: int = 64,
    reference: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample every method on the prompts of ``ps`` with each seed set and score it: oracle all-correct (and FD
    where scenes are known) on the world, else PSNR/SSIM against the ``reference`` method's images."""
    from ..metrics import fidelity
    from ..metrics.world import alignment, oracle_frechet, scene_features
    from ..world import Oracle

    oracle = Oracle()
    ref = scene_features(ps.scenes, oracle) if ps.scenes is not None and len(ps.prompts) > 1 else None
    sets = [[s + k * SEED_SET_STRIDE for s in ps.seeds] for k in range(seed_sets)]
    images: dict[str, list[np.ndarray]] = {}
    nfe: dict[str, float] = {}
    for key, m in methods.items():
        images[key], counts = [], []
        for seeds in sets:
            out = list(generate(pipe, ps.prompts, method=m, seeds=seeds, num_inference_steps=steps,
                                batch_size=batch_size, progress=progress))  # fmt: skip
            images[key].append(np.stack([s.image for s in out]))
            counts += [s.nfe for s in out]
        nfe[key] = float(np.mean(counts))
    rows = []
    for key, m in methods.items():
        row: dict[str, Any] = {"row": key, "method": m.name, "setting": m.setting, "spec": m.spec}
        row |= {"nfe": int(nfe[key]) if nfe[key].is_integer() else round(nfe[key], 2)}
        if ps.specs is not None:
            per_set = [alignment(im, ps.specs, oracle)["all"].astype(float) for im in images[key]]
            ok = np.concatenate(per_set)
            row |= {
                "score": float(ok.mean()),
                "stderr": float(ok.std(ddof=1) / np.sqrt(len(ok))) if len(ok) > 1 else 0.0,
            }
            row |= {"all_correct_per_set": [float(x.mean()) for x in per_set]}
            if ref is not None:
                row["fd"] = float(np.mean([oracle_frechet(im, ps.scenes, oracle, ref) for im in images[key]]))
        elif reference is not None:
            ref = images[reference]
            p = np.concatenate([fidelity.psnr(a, b) for a, b in zip(images[key], ref, strict=True)])
            row |= {
                "score": float(p.mean()),
                "stderr": float(p.std(ddof=1) / np.sqrt(len(p))) if len(p) > 1 else 0.0,
            }
            row["ssim"] = float(
                np.mean([fidelity.ssim(a, b).mean() for a, b in zip(images[key], ref, strict=True)])
            )
        rows.append(row)
    return rows


def best_of(rows: Sequence[dict[str, Any]], methods: dict[str, Method]) -> dict[str, Any]:
    """The best DICE row: the highest score; rows within one standard error of it are tied, and a tie goes to
    the lowest FD (when measured), then to the earliest stop, then to the smallest alpha."""
    dice = [r for r in rows if isinstance(methods[r["row"]], Dice) and r.get("score") is not None]
    if not dice:
        raise InputError(
            "nothing to choose from: no DICE row could be scored (no oracle and no CFG reference)."
        )
    top = max(dice, key=lambda r: r["score"])
    tied = [r for r in dice if r["score"] >= top["score"] - top["stderr"]]
    return min(tied, key=lambda r: (r.get("fd", 0.0), methods[r["row"]].stop, methods[r["row"]].alpha))


def tune(
    pipe: Any,
    sharpener: Sharpener,
    ps: Prompts,
    *,
    alphas: Sequence[float] = TuneJob.alphas,  # the defaults live once, in TuneJob
    stops: Sequence[float] = TuneJob.stops,
    seed_sets: int = TuneJob.seed_sets,
    steps: int = TuneJob.steps,
    guidance_scale: float | None = None,
    negative_stop: float = TuneJob.negative_stop,
    batch_size: int = TuneJob.batch_size,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every candidate setting of ``sharpener`` and CFG beside them; returns the rows and the best
    settings (``{"alpha", "start", "stop", "negative": {...}}``, the form ``config["sampling"]`` takes)."""
    w = guidance_scale or sharpener.config.get("guidance_scale") or 5.0
    methods: dict[str, Method] = {"cfg": CFG(w), "cfg-first": CFG(w, stop=0.1)}
    methods |= {c.spec: c for c in candidates(sharpener, alphas, stops)}
    rows = score_rows(pipe, methods, ps, seed_sets=seed_sets, steps=steps, batch_size=batch_size,
                      reference=None if ps.specs is not None else "cfg", progress=progress)  # fmt: skip
    if ps.specs is None:  # CFG is the reference itself: its row says nothing
        rows = [r for r in rows if r["row"] != "cfg"]
    best = best_of(rows, methods)
    chosen = methods[best["row"]]
    return {
        "rows": rows,
        "best": {
            "alpha": chosen.alpha,
            "start": chosen.start,
            "stop": chosen.stop,
            "negative": {"alpha": 1.0, "start": 0.0, "stop": float(negative_stop)},
        },
        "best_row": best["row"],
        "score": "oracle all-correct" if ps.specs is not None else "PSNR vs CFG (dB)",
        "n_prompts": len(ps.prompts),
        "seed_sets": seed_sets,
        "steps": steps,
    }


def record_settings(folder: str | Path, sharpener: Sharpener, settings: dict[str, Any]) -> None:
    """Write ``settings`` into the sharpener folder as its sampling settings (checked by making a ``Dice`` of
    them first; weights unchanged, files replaced atomically)."""
    settings = json.loads(json.dumps(settings))
    sharpener.config["sampling"] = settings
    Dice(sharpener)  # settings it cannot sample with are refused before anything is written
    sharpener.save_pretrained(Path(folder))


def tune_table(result: dict[str, Any]) -> str:
    """The `dice tune` table: a row per candidate and CFG row, the chosen one marked."""
    from .report import markdown

    world = any("fd" in r for r in result["rows"])
    head = ["method", "setting", "NFE", result["score"], "± SE"] + (["FD"] if world else ["SSIM vs CFG"])
    body = (
        [r["method"] + (" (chosen)" if r["row"] == result["best_row"] else ""), r["setting"], r["nfe"],
         f"{r['score']:.3f}", f"{r['stderr']:.3f}", f"{r.get('fd', r.get('ssim', float('nan'))):.3f}"]
        for r in result["rows"]
    )  # fmt: skip
    return markdown(head, body)


def check_out(out: Path) -> None:
    """Refuse an --out folder whose tune.json / tune.md were not written by `dice tune` (they would be replaced)."""
    record = read_record(out / "tune.json")
    check_own_files(
        out, ("tune.json", "tune.md"), command="tune", ours=record is not None and "best_row" in record
    )


def run_tune(job: TuneJob) -> dict[str, Any]:
    """`dice tune`: load, measure, record the best settings in the sharpener (unless --no-write)."""
    from ..families import check_compatible
    from ..pipeline import default_sharpener, load_pipeline, resolve_device, resolve_dtype
    from ..sharpener import resolve_sharpener

    name = default_sharpener(job.model, job.sharpener)
    if name is None:
        raise InputError("dice tune needs --sharpener (a folder written by `dice train`).")
    sharp = Sharpener.from_pretrained(name)
    folder = Path(resolve_sharpener(name))
    if job.write and not folder.is_dir():
        raise InputError(
            f"{name} is not a local sharpener folder: tune it with --no-write, or download it first."
        )
    candidates(sharp, job.alphas, job.stops)  # bad settings fail before the model loads
    if job.out:
        check_out(Path(job.out))
    ps = validation_prompts(job)
    device = resolve_device(job.device)
    pipe = load_pipeline(job.model, dtype=resolve_dtype(job.dtype, device), device=device)
    check_compatible(pipe, sharp)
    if not job.prompts_file and not reads_shapes_world(pipe):
        raise InputError("dice tune on a model of your own needs --prompts FILE (validation prompts of it).")
    result = tune(pipe, sharp, ps, alphas=job.alphas, stops=job.stops, seed_sets=job.seed_sets, steps=job.steps,
                  guidance_scale=job.guidance_scale, negative_stop=job.negative_stop, batch_size=job.batch_size,
                  progress=job.progress)  # fmt: skip
    result["job"] = asdict(job)
    result["previous"] = sharp.config.get("sampling")
    if job.write:
        record_settings(folder, sharp, result["best"])
        result["written_to"] = str(folder / "config.json")
    if job.out:
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "tune.json", result)
        atomic_write_text(out / "tune.md", tune_table(result) + "\n")
    return result
