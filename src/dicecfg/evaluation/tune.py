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

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..flags import Checked, opt
from ..metrics.world import reads_shapes_world
from ..pipeline import device_option, dtype_option, model_option, sharpener_option
from ..runs.io import (
    atomic_write_files,
    atomic_write_json,
    atomic_write_text,
    check_file_slot,
    check_folder_slot,
    check_own_files,
    check_own_log,
    read_jsonl,
    read_record,
)
from ..runs.jobs import job_pipeline, stderr
from ..sampling.generate import generate
from ..sampling.methods import CFG, Dice, Method, guided_steps
from ..sharpener import Sharpener
from .prompt_sets import PromptSet

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


def validation_prompts(job: TuneJob) -> PromptSet:
    """The prompts of a tuning run: ``--prompts``, else the validation set of the model's world."""
    from ..metrics.world import world_of_model
    from ..world.worlds import get_world

    world = world_of_model(job.model)
    if job.prompts_file:
        from ..sampling.prompts import collect_prompts

        return PromptSet.given(collect_prompts((), job.prompts_file)[: job.limit], job.seed, world=world)
    return PromptSet.of_world(get_world(world).validation_set(job.limit), "validation")


def candidates(
    sharpener: Sharpener, alphas: Sequence[float], stops: Sequence[float], steps: int | None = None
) -> list[Dice]:
    """Every (alpha, stop) as a ``Dice`` from step 0 (the edit acts where guidance acts: first). With ``steps``,
    a stop that gives no guided step at that step count (``int(stop * steps) == 0``) is dropped with one
    warning: such a candidate would run unguided under a DICE label and could be recorded as settings that
    never acted. None left is refused."""
    if not alphas or not stops:
        raise InputError("dice tune needs at least one alpha and one stop.")
    found = [Dice(sharpener, alpha=a, start=0.0, stop=s) for s in stops for a in alphas]
    if steps is None:
        return found
    acting = [c for c in found if len(guided_steps(c.start, c.stop, steps))]
    dropped = sorted({c.stop for c in found} - {c.stop for c in acting})
    if not acting:
        need = 1 / steps
        raise InputError(
            f"--stops {' '.join(f'{s:g}' for s in dropped)}: at --steps {steps} no stop gives a guided step "
            f"(step i is guided when i < int(stop * {steps})): give a stop of at least {need:.3g}, or more steps."
        )
    if dropped:
        log.warning(
            "--stops %s: no guided step at --steps %d (int(stop * %d) = 0): not measured",
            " ".join(f"{s:g}" for s in dropped),
            steps,
            steps,
        )
    return acting


@dataclass
class Measured:
    """What one method made on one seed set, per image (the row's numbers are pooled from these): the NFE run,
    and either the oracle's all-correct (``ok``, with the set's oracle FD where the scenes are known) or PSNR and
    SSIM against the reference method's image of the same seed."""

    nfe: list[float]
    ok: list[float] | None = None
    fd: float | None = None
    psnr: list[float] | None = None
    ssim: list[float] | None = None


class Progress:
    """The measurements of a tuning run so far, one JSON line per (row, seed set) in ``tune_rows.jsonl``, so an
    interrupted `dice tune` resumes from the rows it measured. Lines of another run (another identity: model,
    sharpener weights, prompts, seeds, steps, w, dtype) are ignored; ``path`` None keeps nothing."""

    NAME = "tune_rows.jsonl"

    def __init__(self, path: Path | None, identity: dict[str, Any]) -> None:
        self.path = path
        self.id = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.done: dict[tuple[str, int], Measured] = {}
        if path is not None and path.is_file():
            for _, rec in read_jsonl(path, ours):
                if rec.get("id") == self.id and isinstance(rec.get("set"), int):
                    self.done[(rec["row"], rec["set"])] = Measured(**rec["measured"])
        if self.done:
            log.info("%s: resuming from %d measured row(s)", path, len(self.done))

    def add(self, row: str, k: int, m: Measured) -> None:
        self.done[(row, k)] = m
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"id": self.id, "row": row, "set": k, "measured": asdict(m)})
            with open(self.path, "a", encoding="utf-8") as f:  # one whole line per measurement
                f.write(line + "\n")


def ours(record: dict[str, Any]) -> bool:
    """Whether a line of ``tune_rows.jsonl`` is a measurement `dice tune` wrote."""
    m = record.get("measured")
    return (
        isinstance(record.get("row"), str)
        and isinstance(m, dict)
        and isinstance(m.get("nfe"), list)
        and set(m) <= {f.name for f in fields(Measured)}
    )


def measure(
    pipe: Any,
    method: Method,
    ps: PromptSet,
    seeds: Sequence[int],
    *,
    steps: int,
    batch_size: int,
    progress: bool,
    reference: np.ndarray | None = None,
    oracle: Any = None,
    ref_features: Any = None,
) -> tuple[np.ndarray, Measured]:
    """Sample ``method`` on the prompts of ``ps`` with ``seeds`` and score each image (module docstring)."""
    from ..metrics import fidelity
    from ..metrics.world import alignment, oracle_frechet

    out = list(generate(pipe, ps.prompts, method=method, seeds=seeds, num_inference_steps=steps,
                        batch_size=batch_size, progress=progress))  # fmt: skip
    images = np.stack([s.image for s in out])
    m = Measured(nfe=[float(s.nfe) for s in out])
    if ps.specs is not None:
        m.ok = alignment(images, ps.specs, oracle)["all"].astype(float).tolist()
        if ref_features is not None:
            m.fd = float(oracle_frechet(images, ps.scenes, oracle, ref_features))
    elif reference is not None:
        m.psnr = fidelity.psnr(images, reference).astype(float).tolist()
        m.ssim = [float(fidelity.ssim(images, reference).mean())]
    return images, m


def score_rows(
    pipe: Any,
    methods: dict[str, Method],
    ps: PromptSet,
    *,
    seed_sets: int = 1,
    steps: int = 20,
    batch_size: int = 64,
    reference: str | None = None,
    progress: bool = True,
    done: Progress | None = None,
) -> list[dict[str, Any]]:
    """Sample every method on the prompts of ``ps`` with each seed set and score it: oracle all-correct (and FD
    where scenes are known) on the world, else PSNR/SSIM against the ``reference`` method's images. What
    ``done`` holds is not measured again (the reference's images are made again where a row still needs them)."""
    from ..metrics.world import oracle_for, scene_features

    done = done or Progress(None, {})
    oracle = oracle_for(ps.specs or [])
    feats = scene_features(ps.scenes, oracle) if ps.scenes is not None and len(ps.prompts) > 1 else None
    for k in range(seed_sets):
        seeds = [s + k * SEED_SET_STRIDE for s in ps.seeds]
        ref_images = None
        for key, m in methods.items():
            if (key, k) in done.done and (key != reference or all((r, k) in done.done for r in methods)):
                continue
            images, measured = measure(pipe, m, ps, seeds, steps=steps, batch_size=batch_size, progress=progress,
                                       reference=ref_images, oracle=oracle, ref_features=feats)  # fmt: skip
            if key == reference:
                ref_images = images
            if (key, k) not in done.done:
                done.add(key, k, measured)
    return [row_of(key, m, [done.done[(key, k)] for k in range(seed_sets)]) for key, m in methods.items()]


def row_of(key: str, method: Method, sets: Sequence[Measured]) -> dict[str, Any]:
    """The table row of one method from its measurements on every seed set."""
    nfe = float(np.mean([x for s in sets for x in s.nfe]))
    row: dict[str, Any] = {"row": key, "method": method.name, "setting": method.setting, "spec": method.spec}
    row["nfe"] = int(nfe) if nfe.is_integer() else round(nfe, 2)
    per_image = [s.ok if s.ok is not None else s.psnr for s in sets]
    if any(p is None for p in per_image):  # the reference itself: nothing to compare it with
        return row
    values = np.concatenate([np.asarray(p, dtype=float) for p in per_image])
    row["score"] = float(values.mean())
    row["stderr"] = stderr(values)
    if sets[0].ok is not None:
        row["all_correct_per_set"] = [float(np.mean(s.ok)) for s in sets]
        if sets[0].fd is not None:
            row["fd"] = float(np.mean([s.fd for s in sets]))
    else:
        row["ssim"] = float(np.mean([s.ssim[0] for s in sets]))
    return row


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
    ps: PromptSet,
    *,
    alphas: Sequence[float] = TuneJob.alphas,  # the defaults live once, in TuneJob
    stops: Sequence[float] = TuneJob.stops,
    seed_sets: int = TuneJob.seed_sets,
    steps: int = TuneJob.steps,
    guidance_scale: float | None = None,
    negative_stop: float = TuneJob.negative_stop,
    batch_size: int = TuneJob.batch_size,
    progress: bool = True,
    done: Progress | None = None,
) -> dict[str, Any]:
    """Measure every candidate setting of ``sharpener`` that acts at ``steps`` and CFG beside them; returns the
    rows and the best settings (``{"alpha", "start", "stop", "negative": {...}}``, the form
    ``config["sampling"]`` takes). ``done``: the measurements of an interrupted run, kept and extended."""
    w = guidance_scale or sharpener.config.get("guidance_scale") or 5.0
    methods: dict[str, Method] = {"cfg": CFG(w), "cfg-first": CFG(w, stop=0.1)}
    methods |= {c.spec: c for c in candidates(sharpener, alphas, stops, steps)}
    rows = score_rows(pipe, methods, ps, seed_sets=seed_sets, steps=steps, batch_size=batch_size,
                      reference=None if ps.specs is not None else "cfg", progress=progress,
                      done=done)  # fmt: skip
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
    """Record ``settings`` as the sharpener's sampling settings in its folder: ``config.json`` gets them (the
    settings they replace go to its ``sampling_history``), the card's ``dicecfg:sampling`` section says so, and
    nothing else changes (the weights, their dtype and every line of the card a user wrote stay as they are).
    Both files are written whole to temporary files, then renamed (``runs.io.atomic_write_files``): a failure
    or a kill leaves the old folder, a sharpener, as it was. Settings it cannot sample with are refused first."""
    from datetime import datetime, timezone

    from ..runs.card import CARD_NAME, SAMPLING_SECTION, sampling_section, with_section

    folder = Path(folder)
    settings = json.loads(json.dumps(settings))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    history = list(config.get("sampling_history") or [])
    if "sampling" in config:
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        history.append({"sampling": config["sampling"], "replaced": when})
    config["sampling"] = settings
    config["sampling_history"] = history
    sharpener.config["sampling"] = settings
    Dice(sharpener)  # settings it cannot sample with are refused before anything is written
    card = folder / CARD_NAME
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    text = with_section(text, SAMPLING_SECTION, sampling_section(settings, history))
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    def text_writer(content: str):
        return lambda tmp: Path(tmp).write_text(content, encoding="utf-8")

    atomic_write_files(folder, {"config.json": text_writer(config_text), CARD_NAME: text_writer(text)})


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
    """Refuse an --out folder whose tune.json / tune.md / tune_rows.jsonl were not written by `dice tune`."""
    record = read_record(out / "tune.json")
    check_own_files(
        out, ("tune.json", "tune.md"), command="tune", ours=record is not None and "best_row" in record
    )
    check_own_log(out / Progress.NAME, ours, command="tune", fix="use another --out folder, or move it away")


def sharpener_folder(job: TuneJob, name: str) -> Path:
    """The folder `dice tune` records settings in, checked before any work: a local folder of the user's that
    this process can write (never the package's own shipped sharpener)."""
    from ..assets import MINI_SHARPENER
    from ..sharpener import resolve_sharpener

    folder = Path(resolve_sharpener(name))
    if not folder.is_dir():
        raise InputError(
            f"{name} is not a local sharpener folder: tune it with --no-write, or download it first."
        )
    if folder.resolve() == MINI_SHARPENER.resolve():
        raise InputError(
            f"dice tune records settings in the sharpener folder, and {folder} is the shipped sharpener, part of "
            "the installed package: copy it (cp -r it my-sharpener), then pass --sharpener my-sharpener; or "
            "measure only with --no-write."
        )
    fix = "copy the folder somewhere you can write and pass that --sharpener, or measure only with --no-write"
    check_folder_slot(folder, fix=fix)
    for file in ("config.json", "README.md"):
        check_file_slot(folder / file, fix=fix)
    check_own_log(folder / Progress.NAME, ours, command="tune", fix="move it away")
    return folder


def run_tune(job: TuneJob) -> dict[str, Any]:
    """`dice tune`: check, load, measure (resuming from what an interrupted run measured), write --out, then
    record the best settings in the sharpener (unless --no-write)."""
    from ..families import check_compatible
    from ..pipeline import default_sharpener

    name = default_sharpener(job.model, job.sharpener)
    if name is None:
        raise InputError("dice tune needs --sharpener (a folder written by `dice train`).")
    sharp = Sharpener.from_pretrained(name)
    folder = sharpener_folder(job, name) if job.write else None
    candidates(sharp, job.alphas, job.stops, job.steps)  # bad settings fail before the model loads
    if job.out:
        check_out(Path(job.out))
    ps = validation_prompts(job)
    pipe = job_pipeline(job.model, job.device, job.dtype)
    check_compatible(pipe, sharp)
    if not reads_shapes_world(pipe):  # the oracle judges shapes-world images only (module docstring)
        if not job.prompts_file:
            raise InputError(
                "dice tune on a model of your own needs --prompts FILE (validation prompts of it)."
            )
        ps = ps.without_oracle()
    place = Path(job.out) if job.out else folder
    done = Progress(place / Progress.NAME if place else None, progress_identity(job, pipe, sharp, ps))
    result = tune(pipe, sharp, ps, alphas=job.alphas, stops=job.stops, seed_sets=job.seed_sets, steps=job.steps,
                  guidance_scale=job.guidance_scale, negative_stop=job.negative_stop, batch_size=job.batch_size,
                  progress=job.progress, done=done)  # fmt: skip
    result["job"] = asdict(job)
    result["previous"] = sharp.config.get("sampling")
    if folder is not None:
        result["written_to"] = str(folder / "config.json")
    if job.out:  # first: the table survives a sharpener folder that fails to take the settings
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "tune.json", result)
        atomic_write_text(out / "tune.md", tune_table(result) + "\n")
    if folder is not None:
        record_settings(folder, sharp, result["best"])
        if not job.out and done.path is not None and done.path.exists():
            done.path.unlink()  # kept in the sharpener folder only while the run was unfinished
    return result


def progress_identity(job: TuneJob, pipe: Any, sharp: Sharpener, ps: PromptSet) -> dict:
    """What a measurement depends on: measurements of another identity are not resumed."""
    from ..pipeline import model_id

    weights = sharp.state_dict()
    digest = hashlib.sha256()
    for k in sorted(weights):
        digest.update(k.encode() + weights[k].detach().float().cpu().numpy().tobytes())
    return {
        "model": model_id(pipe),
        "sharpener": digest.hexdigest(),
        "prompts": hashlib.sha256(json.dumps([ps.prompts, ps.seeds]).encode()).hexdigest(),
        "oracle": ps.specs is not None,
        "steps": job.steps,
        "w": job.guidance_scale or sharp.config.get("guidance_scale") or 5.0,
        "dtype": str(pipe.dtype),
        "device": pipe._execution_device.type,
        "version": 1,
    }
