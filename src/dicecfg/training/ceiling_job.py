"""`dice ceiling` as a run in a folder: ``ceiling()`` checks its inputs and folder (resume or refuse), records
the run (ceiling_run.json), calls the library (``training.ceiling``) and writes the report (ceiling.json,
ceiling.md, grid.png); ``CeilingJob`` and ``run_ceiling`` are the command's options and entry."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..families import check_compatible, family_of
from ..flags import Checked, opt
from ..pipeline import (
    default_sharpener,
    device_option,
    dtype_option,
    is_mini,
    model_option,
)
from ..runs.io import atomic_write_json, atomic_write_text, check_own_files, read_record
from ..runs.jobs import job_pipeline, seeds_of
from ..sharpener import Sharpener
from ..world.heldout import HELDOUT_SIZE
from .ceiling import CeilingConfig, measure_ceiling


@dataclass
class CeilingReport:
    """What ``ceiling`` measured: one row per method (NFE, held-out loss, oracle scores) and where files went."""

    rows: list[dict[str, Any]]
    output_dir: Path

    def table(self) -> str:
        from ..evaluation.report import ceiling_table

        return ceiling_table(self.rows)


def ceiling(
    pipe: Any,
    prompts: Sequence[str],
    *,
    output_dir: str | Path,
    config: CeilingConfig = CeilingConfig(),  # noqa: B008 - frozen: a safe default argument
    sharpener: Sharpener | None = None,
    seeds: Sequence[int] | int = 0,
    specs: Sequence[Any] | None = None,
) -> CeilingReport:
    """Optimise a free embedding edit per prompt on the DICE objective and compare it with unguided, CFG and
    ``sharpener`` (module docstring). ``seeds``: the sampler seed of each prompt's images (an int: seed + i).
    ``specs``: what each prompt asserts in the model's world (default: parsed from the prompts when they are
    all in its grammar); with them the report has the oracle's scores. Re-running resumes from
    ``output_dir``; its ``ceiling.json`` and ``grid.png`` hold the report."""
    from ..metrics.world import world_of, world_specs

    prompts = list(prompts)
    if not prompts:
        raise InputError("ceiling() needs at least one prompt.")
    cfg = config
    fam = family_of(pipe) if sharpener is None else check_compatible(pipe, sharpener)
    seeds = seed_list(seeds, len(prompts))
    if len(seeds) != len(prompts):
        raise InputError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt.")
    specs = list(specs) if specs is not None else world_specs(prompts, world_of(pipe) or "shapes")
    out = Path(output_dir)
    record = run_record(cfg, prompts, seeds)
    check_ceiling_folder(out, record)
    (out / "edits").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, record)
    rows, images = measure_ceiling(pipe, fam, prompts, seeds, specs, cfg, sharpener, out / "edits")
    report = CeilingReport(rows, out)
    from ..evaluation.report import ceiling_comparison

    summary = {"config": asdict(cfg), "rows": rows, "comparison": ceiling_comparison(rows)}
    atomic_write_json(out / "ceiling.json", summary)
    atomic_write_text(out / "ceiling.md", report.table() + "\n")
    _grid(images, prompts, out / "grid.png")
    return report


RUN_FILE = "ceiling_run.json"  # the run's prompts, seeds and settings: the provenance of the folder
FILES = ("ceiling.json", "ceiling.md", "grid.png", "edits")  # what a run writes beside it
NOT_SETTINGS = ("progress",)  # config fields that do not shape the result: never compared
# config fields whose rows every run samples anew from nothing the folder keeps (another value adds or drops
# rows): never compared, so a finished run can be compared with other CFG intervals
MEASURED_ANEW = ("cfg_intervals",)
# settings added after the first version, as a record made before them ran: such a folder resumes
BEFORE_RECORDED = {"edits": "static", "interval": "0,1"}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two ceiling_run.json records, each named (settings that do not shape the result
    left out)."""
    out = []
    old_cfg = {**BEFORE_RECORDED, **old["config"]} if isinstance(old.get("config"), dict) else {}
    new_cfg = new["config"]
    for k in sorted((set(old_cfg) | set(new_cfg)) - set(NOT_SETTINGS) - set(MEASURED_ANEW)):
        if old_cfg.get(k) != new_cfg.get(k):
            out.append(f"{k}: {old_cfg.get(k, 'missing')!r} -> {new_cfg.get(k, 'missing')!r}")
    for k in ("prompts", "seeds"):
        a, b = old.get(k) if isinstance(old.get(k), list) else [], new[k]
        if a != b:
            first = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
            )
            out.append(f"{k}: {len(a)} -> {len(b)}" if len(a) != len(b) else f"{k}: #{first + 1} differs")
    return out


def seed_list(seeds: Sequence[int] | int, n: int) -> list[int]:
    """The sampler seed of each of ``n`` prompts: the given list, or (an int) seed, seed + 1, ..."""
    return seeds_of(seeds, range(n)) if isinstance(seeds, int) else list(seeds)


def run_record(cfg: CeilingConfig, prompts: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """What ceiling_run.json holds: the settings, prompts and seeds of a run (JSON types)."""
    return json.loads(json.dumps({"config": asdict(cfg), "prompts": list(prompts), "seeds": list(seeds)}))


def check_ceiling_folder(out: Path, record: dict[str, Any]) -> None:
    """Before a run writes into ``out``: a folder of a ceiling run resumes when its prompts, seeds and settings
    are the same (else each difference is named); any other file it would replace is refused
    (``runs.io.check_own_files``); a damaged ceiling_run.json is named with what to do."""
    path = out / RUN_FILE
    if os.path.lexists(path):
        old = read_record(path)
        if old is None:
            raise InputError(
                f"{path} is damaged (not a JSON object in UTF-8). It records the prompts, seeds and settings of "
                f"the edits in {out / 'edits'}: restore it, or use another --out folder."
            )
        changed = _differences(old, record)
        if changed:
            raise InputError(
                f"{out} holds a ceiling run with other prompts, seeds or settings ({'; '.join(changed)}). Repeat "
                "the original ones to resume it, or use another --out folder."
            )
    check_own_files(out, FILES, command="ceiling", ours=os.path.lexists(path))


def _grid(images: dict[str, np.ndarray], prompts: list[str], path: Path, n: int = 8) -> None:
    from ..sampling.grid import save_grid

    n = min(n, len(prompts))
    tiles = [images[row][i] for row in images for i in range(n)]
    labels = [f"{row}: {prompts[i]}" for row in images for i in range(n)]
    save_grid(tiles, path, cols=n, labels=labels)


@dataclass(frozen=True)
class CeilingJob(Checked):
    """`dice ceiling`: the model, the prompts, the sharpener to compare and the optimisation (``config``)."""

    prompts: tuple[str, ...] = opt(
        (), "prompts (default with the mini model: its held-out prompts)", positional=True
    )
    prompts_file: str | None = opt(
        None, "text file (one prompt per line) or JSONL", flag="--prompts", metavar="FILE", path="file"
    )
    limit: int = opt(
        32,
        f"held-out prompts of the shapes world used when no prompts are given (mini model; {HELDOUT_SIZE}: all)",
        min=1,
        max=HELDOUT_SIZE,
    )
    out: str = opt(
        "ceiling",
        "output folder: ceiling.json, ceiling.md, grid.png, edits/ (re-run to resume)",
        path="out_dir",
    )
    model: str | None = model_option()
    sharpener: str | None = opt(None, "sharpener to compare (default with the mini model: the shipped one)")
    device: str | None = device_option()
    dtype: str | None = dtype_option(training=True)
    config: CeilingConfig = opt(help="the optimisation", factory=CeilingConfig)


def run_ceiling(job: CeilingJob) -> CeilingReport:
    """``dice ceiling``: load the model (and sharpener), pick the prompts, run :func:`ceiling`."""
    from ..sampling.prompts import collect_prompts

    name = default_sharpener(job.model, job.sharpener)
    sharp = Sharpener.from_pretrained(name) if name else None  # the small file first: a bad path fails fast
    specs = None
    if job.prompts or job.prompts_file:
        prompts, seeds = collect_prompts(job.prompts, job.prompts_file), job.config.seed
    elif is_mini(job.model):
        from ..metrics.world import world_of_model
        from ..world.worlds import get_world

        items = get_world(world_of_model(job.model)).heldout_set(job.limit)
        prompts, seeds, specs = (
            [it.prompt for it in items],
            [it.seed for it in items],
            [it.spec for it in items],
        )
    else:
        raise InputError(
            "dice ceiling needs prompts for this model: pass them as arguments or --prompts FILE."
        )
    check_ceiling_folder(
        Path(job.out), run_record(job.config, prompts, seed_list(seeds, len(prompts)))
    )  # before the model loads
    pipe = job_pipeline(job.model, job.device, job.dtype, training=True)
    return ceiling(
        pipe, prompts, output_dir=job.out, config=job.config, sharpener=sharp, seeds=seeds, specs=specs
    )
