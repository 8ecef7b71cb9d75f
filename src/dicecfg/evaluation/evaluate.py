"""Method x metric tables from ``generate()``'s stream (`dice eval`).

Each row is one method with its settings (``sampling.methods``: cfg at w on a step interval, Adaptive Guidance,
scaling at s, dice at alpha on an interval with one sharpener, unguided) at one step count. Its images are saved as ``out/images/<row key>/<index>-seed<seed>-<prompt hash>.png``;
a re-run regenerates only what is missing, so an interrupted or extended evaluation resumes. Metrics are
computed from the saved images: oracle alignment and an oracle-feature Frechet distance on the shapes world,
PSNR/SSIM against the CFG image of the same prompt and seed, FID / CLIP / aesthetic scores when weights are
given."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..flags import Checked, opt
from ..pipeline import device_option, dtype_option, model_option
from ..runs.io import (
    atomic_write_json,
    atomic_write_text,
    check_file_slot,
    check_folder_slot,
    check_own_files,
    read_record,
)
from ..runs.jobs import job_pipeline, on_rank_0
from ..runs.parallel import Parallel
from ..sampling.checks import SEED_MAX
from ..sampling.fast import FAST_CHOICES
from ..sampling.generate import generate
from ..sampling.methods import CFG, PEER_STOP, Dice
from ..sampling.spelling import parse_method, spelling_help
from .images import Row, ensure_images, fast_paths, load_images, meta_mean, seconds_per_image
from .prompt_sets import PromptSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalJob(Checked):
    """`dice eval`: the rows (methods x settings x step counts), the prompts, the metrics and the folder."""

    out: str = opt(
        "eval", "output folder: images/, eval.json, eval.md, eval_nfe.png (re-run to resume)", path="out_dir"
    )
    model: str | None = model_option()
    sharpeners: tuple[str, ...] = opt(
        (),
        "sharpener folders for dice rows (default with the mini model: the shipped one)",
        flag="--sharpener",
        metavar="SHARPENER",
    )
    prompts: tuple[str, ...] = opt((), "prompts (default: the shapes world's held-out set)", positional=True)
    prompts_file: str | None = opt(
        None,
        "text file or JSONL of prompts (instead of the held-out set)",
        flag="--prompts",
        metavar="FILE",
        path="file",
    )
    limit: int = opt(64, "use the first N prompts of the set")
    seed: int = opt(
        0, "prompt i gets seed + i (held-out items carry their own fixed seeds)", min=0, max=SEED_MAX
    )
    methods: tuple[str, ...] = opt(
        ("unguided", "cfg", f"cfg:stop={PEER_STOP:g}", "ag", "scaling", "dice"),
        f"which methods to run, each {spelling_help()}; a setting left open takes every value of --cfg-scales, "
        "--scales or --alphas",
        metavar="METHOD",
    )
    cfg_scales: tuple[float, ...] = opt((5.0,), "CFG scales w (cfg, ag); the first is the fidelity reference")
    scales: tuple[float, ...] = opt((1.2,), "embedding scales s of the scaling baseline")
    alphas: tuple[float, ...] = opt(
        (), "DICE edit strengths (default: each sharpener's recorded settings, else 1)"
    )
    steps: tuple[int, ...] = opt((20,), "sampling step counts; every method runs at each")
    negative_prompt: str | None = opt(None, "also run cfg and dice with this negative prompt")
    batch_size: int = opt(16, "images per pipeline call (pixels vary with it by 1/255 at most)")
    height: int | None = opt(None, "image height in pixels (default: the model's native size)", min=8)
    width: int | None = opt(None, "image width in pixels (default: the model's native size)", min=8)
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    fast: str = opt(
        "auto",
        "fast sampling path: auto (on CUDA: graphs, or compile for long rows; eager elsewhere), off, graphs or "
        "compile (docs/fast.md); eval.json records the path each row ran on",
        choices=FAST_CHOICES,
        const="graphs",
    )
    gpus: int = opt(
        1,
        "sample in N processes, one per GPU, prompts split by index (relaunches itself, "
        "one process per rank; the same images and eval.json as one process; docs/parallel.md)",
        metavar="N",
        min=1,
    )
    clip: str | None = opt(None, "local CLIP model folder: CLIP score")
    aesthetic: str | None = opt(None, "local LAION aesthetic MLP weights (.pth or .safetensors)")
    aesthetic_clip: str | None = opt(
        None, "local CLIP ViT-L/14 folder for the aesthetic head (default: --clip)"
    )
    inception: str | None = opt(None, "local torch-fidelity Inception weights: FID")
    fid_ref: str | None = opt(None, "FID reference: .npz with mu/sigma, or a folder of reference images")
    plot: bool = opt(True, "write eval_nfe.png")
    progress: bool = opt(True, "progress bars", cli=False)


def prompt_set(cfg: EvalJob) -> PromptSet:
    """The prompts to evaluate: given prompts / a prompt file, else the held-out set of the model's world (the
    shapes world's for a model that records none)."""
    from ..metrics.world import world_of_model

    if cfg.limit < 1:
        raise InputError(f"--limit must be >= 1 (got {cfg.limit}).")
    if cfg.prompts or cfg.prompts_file:
        from ..sampling.prompts import collect_prompts

        prompts = collect_prompts(cfg.prompts, cfg.prompts_file)[: cfg.limit]
        return PromptSet.given(prompts, cfg.seed, world=world_of_model(cfg.model))
    return PromptSet.of_world(heldout_items(cfg.limit, world_of_model(cfg.model)), "heldout")


def heldout_items(limit: int, world: str = "shapes") -> list:
    """The first ``limit`` items of ``world``'s held-out set; a limit beyond the set is refused."""
    from ..world.worlds import get_world

    w = get_world(world)
    if limit > w.heldout_size:
        raise InputError(
            f"--limit {limit}: the held-out set has {w.heldout_size} prompts; give --limit {w.heldout_size} or "
            "less, or your own prompts (--prompts FILE)."
        )
    return w.heldout_set(limit)


def sharpener_tag(name: str) -> str:
    """A short folder-safe name for a sharpener: its folder name and a hash of its weights."""
    from ..sharpener import resolve_sharpener

    path = Path(resolve_sharpener(name))
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", path.name or name).strip("-")[:32] or "sharpener"
    weights = path / "model.safetensors"
    return f"{slug}-{hashlib.sha1(weights.read_bytes()).hexdigest()[:8]}" if weights.is_file() else slug


def make_rows(
    cfg: EvalJob,
    sharpeners: dict[str, Any],
    *,
    notice: bool = True,
    parsed: Sequence[tuple[type, dict[str, float]]] | None = None,
) -> list[Row]:
    """Rows in table order: for each step count, each method of ``cfg.methods`` in order, a setting it leaves
    open taking every value of its list (w: --cfg-scales, s: --scales, alpha: --alphas), dice rows once per
    sharpener (tag -> Sharpener); with a negative prompt, a twin of each row that takes one (w: the first).
    Rows that come out the same (``--cfg-scales 5 5.0``) are kept once, with a warning unless ``notice`` is off.
    ``parsed``: ``cfg.methods`` already parsed (``parse_method``), so that they are parsed once."""
    if any(s < 1 for s in cfg.steps):
        raise InputError(f"--steps must be >= 1 (got {list(cfg.steps)}).")
    lists = {"guidance_scale": cfg.cfg_scales, "scale": cfg.scales, "alpha": cfg.alphas}
    methods = []
    for cls, spelled_settings in parsed if parsed is not None else map(parse_method, cfg.methods):
        settings = dict(spelled_settings)
        choices = [settings]
        for f, values in lists.items():
            if f in cls.keys.values() and f not in settings and values:
                choices = [c | {f: v} for c in choices for v in values]
        tags = list(sharpeners) if cls is Dice else [None]
        methods += [(cls.create(c, sharpeners.get(t)), t) for c in choices for t in tags]
    rows: dict[str, Row] = {}
    asked = 0
    for steps in cfg.steps:
        for (
            m,
            tag,
        ) in methods:  # each row as it acts at its steps (an interval with no guided step: what runs)
            row, asked = Row(m.acting(steps), steps, tag), asked + 1
            rows.setdefault(row.key, row)
        for m, tag in methods if cfg.negative_prompt else ():
            w = getattr(m, "guidance_scale", cfg.cfg_scales[0])
            if m.uses_negative and w == cfg.cfg_scales[0]:
                row, asked = Row(m.acting(steps), steps, tag, cfg.negative_prompt), asked + 1
                rows.setdefault(row.key, row)
    if notice and asked > len(rows):
        log.warning(
            "%d of the %d rows asked for repeat another (equal values): each is made once",
            asked - len(rows),
            asked,
        )
    return list(rows.values())


def reference_row(cfg: EvalJob, rows: list[Row], steps: int) -> Row | None:
    """The fidelity reference at ``steps``: full CFG at the first w, when it is one of the rows."""
    ref = Row(CFG(cfg.cfg_scales[0]), steps)
    return ref if any(r.key == ref.key for r in rows) else None


def row_metrics(
    images: np.ndarray, ps: PromptSet, reference: np.ndarray | None, real=None
) -> dict[str, float]:
    """Every metric that applies to one row's images."""
    from ..metrics import fidelity

    out: dict[str, float] = {}
    if ps.specs is not None:
        from ..metrics.world import alignment, oracle_frechet

        out |= alignment_means(alignment(images, ps.specs))
        if ps.scenes is not None and len(images) > 1:
            out["fd_oracle"] = oracle_frechet(images, ps.scenes)
    if reference is not None:
        out["psnr"] = float(fidelity.psnr(images, reference).mean())
        out["ssim"] = float(fidelity.ssim(images, reference).mean())
    if real is not None and real.enabled:
        out |= real(images, ps.prompts)
    return out


def alignment_means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """The table's alignment columns (``align_all``, ``align_count``, ...) from per-image oracle scores."""
    return {f"align_{k}": float(v.mean()) for k, v in scores.items()}


EVAL_FILES = ("eval.json", "eval.md", "eval_nfe.png", "images")  # what `dice eval` writes beside its run.json


def check_eval_folder(out: Path) -> None:
    """Refuse an --out folder holding files `dice eval` did not write (``runs.io.check_own_files``); its record
    is run.json with an eval config. A training run folder is named as such."""
    record = read_record(out / "run.json")
    if record is None and (out / "run.json").exists():
        return  # damaged: write_run_json names it with what to do
    config = (record or {}).get("config")
    ours = isinstance(config, dict) and "cfg_scales" in config
    if record is not None and not ours:
        raise InputError(
            f"{out} is a training run folder (its run.json is not of `dice eval`), not an eval folder: give "
            "dice eval another --out folder."
        )
    check_own_files(out, EVAL_FILES, command="eval", ours=ours)


def check_eval_slots(out: Path, rows: Sequence[Row]) -> None:
    """Refuse, before the model loads, an eval folder whose parts are not what `dice eval` writes there: a file
    where ``images/`` or a row's folder goes, a folder where a file goes, or a folder it may not write in."""
    fix = "move it away, or give dice eval another --out folder"
    for name in ("run.json", "eval.json", "eval.md", "eval_nfe.png"):
        check_file_slot(out / name, fix=fix)
    for row in rows:
        check_folder_slot(out / "images" / row.key, fix=fix)
        check_file_slot(out / "images" / row.key / "meta.jsonl", fix=fix)


def evaluate(
    pipe, cfg: EvalJob, ps: PromptSet, sharpeners: dict[str, Any], real=None, rows: list[Row] | None = None
) -> dict[str, Any] | None:
    """Generate what is missing, then score every row; writes eval.json and eval.md (and the plot). In one of
    several processes (``--gpus N``) each makes its share of the images and rank 0 alone scores and writes
    (the others return None). ``rows``: ``make_rows(cfg, sharpeners)`` when the caller has them."""
    rows = rows if rows is not None else make_rows(cfg, sharpeners, notice=False)
    par = Parallel.current(pipe._execution_device)
    made = make_images(pipe, cfg, ps, rows, par)
    if not par.main:
        return None
    results = score(cfg, ps, rows, made, real)
    return write_report(cfg, ps, results)


def make_images(pipe, cfg: EvalJob, ps: PromptSet, rows: Sequence[Row], par: Parallel) -> dict[str, int]:
    """Every row's missing images (this rank's share); row key -> how many were made (by every rank, on rank
    0)."""
    out = Path(cfg.out)
    return {
        row.key: ensure_images(
            pipe,
            row,
            ps.prompts,
            ps.seeds,
            out / "images" / row.key,
            batch_size=cfg.batch_size,
            height=cfg.height,
            width=cfg.width,
            progress=cfg.progress and par.main,
            fast=cfg.fast,
            par=par,
        )  # fmt: skip
        for row in rows
    }


def score(cfg: EvalJob, ps: PromptSet, rows: Sequence[Row], made: dict[str, int], real=None) -> list[dict]:
    """The result of every row, from its images on disk: what it is, what it cost, every metric that applies
    (fidelity against the reference row at the same step count, read once per step count)."""
    out = Path(cfg.out)
    refs: dict[int, np.ndarray] = {}
    results = []
    for row in rows:
        images = load_images(out / "images" / row.key, ps.prompts, ps.seeds)
        ref_row = reference_row(cfg, rows, row.steps)
        if ref_row is not None and row.steps not in refs:
            same = ref_row.key == row.key
            refs[row.steps] = (
                images if same else load_images(out / "images" / ref_row.key, ps.prompts, ps.seeds)
            )
        result = row_record(row, out / "images" / row.key, len(images), made[row.key])
        results.append(result | row_metrics(images, ps, refs.get(row.steps), real))
        log.info("%s: %s", row.key, {k: v for k, v in results[-1].items() if isinstance(v, float)})
    return results


def row_record(row: Row, folder: Path, n: int, generated: int) -> dict[str, Any]:
    """What a row is and what its images cost (NFE and seconds as measured, from meta.jsonl)."""
    nfe = meta_mean(folder, n, "nfe")
    return {
        "label": row.label,
        "method": row.method.name,
        "spec": row.method.spec,
        "setting": row.method.setting,
        "key": row.key,
        "params": row.params,
        "steps": row.steps,
        "nfe": row.nfe if nfe is None else (int(nfe) if nfe.is_integer() else round(nfe, 2)),
        "n": n,
        "generated": generated,
        "seconds_per_image": seconds_per_image(folder, n),
        "fast": fast_paths(folder, n),
    }


def write_report(cfg: EvalJob, ps: PromptSet, results: list[dict[str, Any]]) -> dict[str, Any]:
    """eval.json (with the config and versions), eval.md and the plot; returns the report."""
    from ..runs.folder import versions
    from .report import eval_table, plot_nfe

    out = Path(cfg.out)
    report = {
        "prompt_set": ps.name,
        "n": len(ps.prompts),
        "config": asdict(cfg),
        "versions": versions(),
        "fidelity_reference": f"cfg w={cfg.cfg_scales[0]} at the row's step count",
        "rows": results,
    }
    atomic_write_json(out / "eval.json", report)
    atomic_write_text(out / "eval.md", eval_table(results) + "\n")
    if cfg.plot:
        plot_nfe(results, out / "eval_nfe.png")
    return report


@dataclass
class EvalInputs:
    """What ``dice eval`` checks before anything heavy loads (``eval_inputs``)."""

    sharpeners: dict[str, Any]  # tag -> Sharpener
    rows: list[Row]
    prompts: PromptSet


def eval_inputs(cfg: EvalJob) -> EvalInputs:
    """The sharpeners, rows and prompts of ``cfg``, checked before the model loads (also before ``--gpus N``
    starts its processes): bad method spellings first, then a missing sharpener, bad settings or steps, an
    output folder of someone else's files, bad prompts."""
    from ..pipeline import default_sharpener
    from ..sharpener import Sharpener

    parsed = [parse_method(m) for m in cfg.methods]  # bad spellings fail here, first
    shipped = default_sharpener(cfg.model, None)
    names = list(cfg.sharpeners) or ([shipped] if shipped else [])
    wants_dice = any(cls is Dice for cls, _ in parsed)
    if wants_dice and not names:
        raise InputError(
            "dice rows need --sharpener (a folder written by `dice train`), or drop dice from --methods."
        )
    names = names if wants_dice else []
    sharpeners = {sharpener_tag(n): Sharpener.from_pretrained(n) for n in names}
    rows = make_rows(cfg, sharpeners, parsed=parsed)  # bad settings or steps
    check_eval_folder(Path(cfg.out))
    check_eval_slots(Path(cfg.out), rows)
    return EvalInputs(sharpeners, rows, prompt_set(cfg))


def run_eval(cfg: EvalJob) -> dict[str, Any] | None:
    """`dice eval`: load the model, sharpeners and metric weights (failing early), then :func:`evaluate`."""
    from ..families import check_compatible
    from ..metrics.real import RealMetrics
    from ..pipeline import model_id, resolve_device
    from ..runs.folder import run_record, write_run_json
    from ..runs.parallel import rank_device

    inputs = eval_inputs(cfg)
    sharpeners, ps = inputs.sharpeners, inputs.prompts
    device = rank_device(resolve_device(cfg.device))  # one GPU per process under a launcher
    real = RealMetrics(
        clip=cfg.clip,
        aesthetic=cfg.aesthetic,
        aesthetic_clip=cfg.aesthetic_clip,
        inception=cfg.inception,
        fid_ref=cfg.fid_ref,
        device=device,
    )
    pipe = job_pipeline(cfg.model, cfg.device, cfg.dtype)
    for sharp in sharpeners.values():  # a mismatched sharpener fails before any sampling
        check_compatible(pipe, sharp)
    identity = {
        "model": model_id(pipe),
        "dtype": str(pipe.dtype),
        "device_type": pipe._execution_device.type,
        "height": cfg.height,
        "width": cfg.width,
    }
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    par = Parallel.current(pipe._execution_device)
    on_rank_0(par, lambda: write_run_json(Path(cfg.out), run_record(cfg), identity))
    return evaluate(pipe, cfg, ps, sharpeners, real, inputs.rows)


def sample_and_score(pipe, items: Sequence, method, *, oracle=None, **generate_kwargs):
    """Sample held-out ``items`` (EvalItem: prompt, spec, seed) with ``method`` through ``generate()`` and
    score them: returns the images (N, H, W, 3), the samples, and the per-image oracle scores."""
    from ..metrics.world import alignment

    samples = list(
        generate(
            pipe,
            [it.prompt for it in items],
            method=method,
            seeds=[it.seed for it in items],
            **generate_kwargs,
        )
    )
    images = np.stack([s.image for s in samples])
    return images, samples, alignment(images, [it.spec for it in items], oracle)
