"""`dice sample`: the options of a sampling run (a frozen dataclass) and the one function that runs it.

The CLI parses flags into the dataclass; loading, sampling and writing happen here, so the same job is usable
from Python.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import InputError
from ..flags import Checked, opt
from ..pipeline import (
    default_sharpener,
    device_option,
    dtype_option,
    model_option,
    sharpener_option,
)
from ..runs.io import check_folder_slot, check_own_log, read_jsonl
from ..runs.jobs import job_pipeline, seeds_of
from ..runs.parallel import Parallel
from ..sharpener import Sharpener
from .checks import SEED_MAX, check_seeds
from .fast import FAST_CHOICES
from .generate import generate
from .methods import CFG, Dice, Method
from .prompts import collect_prompts
from .shard import share
from .spelling import parse_method, spelling_help
from .store import append_records, embedded_record, end_line, write_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleJob(Checked):
    """`dice sample`: what to generate, how, and where to write it."""

    prompts: tuple[str, ...] = opt((), "prompts (or use --prompts FILE)", positional=True)
    prompts_file: str | None = opt(
        None, "text file (one prompt per line) or JSONL", flag="--prompts", metavar="FILE", path="file"
    )
    model: str | None = model_option()
    sharpener: str | None = sharpener_option()
    method: str = opt("dice", f"sampling method: {spelling_help()}")
    guidance_scale: float = opt(5.0, "CFG scale w (methods cfg and ag)")
    alpha: float | None = opt(
        None, "edit strength (method dice; default: the sharpener's recorded setting, else 1)"
    )
    scale: float = opt(1.2, "embedding scale s (method scaling)")
    negative_prompt: str | None = opt(None, "negative prompt: c_neg for cfg and dice")
    steps: int = opt(20, "sampling steps", min=1)
    seed: int = opt(0, "seed of the first image; image i uses seed + i", min=0, max=SEED_MAX)
    batch_size: int = opt(8, "images per pipeline call (pixels vary with it by 1/255 at most)", min=1)
    height: int | None = opt(None, "image height in pixels (default: the model's native size)", min=8)
    width: int | None = opt(None, "image width in pixels (default: the model's native size)", min=8)
    out: str = opt(
        "samples",
        "output folder; a folder with samples keeps them (numbers go on, samples.jsonl grows)",
        path="out_dir",
    )
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    fast: str = opt(
        "auto",
        "fast path: auto (several prompts on CUDA: graphs, or compile for long jobs; eager otherwise); graphs "
        "(--fast alone) replays the denoiser as CUDA graphs, the same images (CUDA only; eager with a notice "
        "elsewhere); compile runs it torch.compiled; off: eager (docs/fast.md). samples.jsonl records the path run",
        choices=FAST_CHOICES,
        const="graphs",
    )
    gpus: int = opt(
        1,
        "sample in N processes, one per GPU, prompts split by index (relaunches itself, "
        "one process per rank; the same images as one process; docs/parallel.md)",
        metavar="N",
        min=1,
    )
    progress: bool = opt(True, "progress bars", cli=False)


FLAT = ("guidance_scale", "alpha", "scale", "negative_prompt", "sharpener")  # flags only some methods read


def flag_settings(
    job: SampleJob, cls: type[Method], spelled: dict[str, float]
) -> tuple[dict[str, float], list[str]]:
    """The settings of ``job``'s method: its spelling (parsed: ``cls, spelled``), and the flags (--guidance-scale,
    --alpha, --scale) for what the spelling leaves open; and the flags of other methods that ``job`` sets (off
    their defaults) although its method ignores them."""
    flags = {"guidance_scale": job.guidance_scale, "scale": job.scale, "alpha": job.alpha}
    open_fields = set(cls.keys.values()) - set(spelled)
    settings = {f: v for f, v in flags.items() if f in open_fields and v is not None} | spelled
    reads = open_fields | ({"negative_prompt"} if cls.uses_negative else set())
    reads |= {"sharpener"} if cls is Dice else set()
    default = {f.name: f.default for f in fields(job)}
    ignored = ["--" + o.replace("_", "-") for o in FLAT if o not in reads and getattr(job, o) != default[o]]
    return settings, ignored


IMAGE_NAME = re.compile(r"(\d+)_.+_seed\d+\.png")  # NNNN_method_seedS.png: the names dice sample writes
LOG = "samples.jsonl"
FOLDER_FIX = "give another --out folder, or move it away"


def next_index(out: Path) -> int:
    """The number the next sample in ``out`` gets: one past the highest ``NNNN_method_seedS.png`` already there
    (files of other names, such as ``2024_report.pdf``, do not count)."""
    taken = (int(m[1]) for p in out.iterdir() if (m := IMAGE_NAME.fullmatch(p.name)))
    return max(taken, default=-1) + 1


def is_record(rec: dict) -> bool:
    """Whether a line of samples.jsonl is a record `dice sample` wrote."""
    return isinstance(rec.get("file"), str) and "seed" in rec and "method" in rec


def check_sample_folder(out: Path) -> None:
    """Refuse, before any work, an --out folder dice sample cannot add to: a file on its way, no permission, a
    ``samples.jsonl`` that is a folder, a symbolic link (the appends would leave the folder) or a file of
    someone else's (no record of ours)."""
    check_folder_slot(out, fix="give another --out folder")
    check_own_log(out / LOG, is_record, command="sample", fix=FOLDER_FIX)


def recover_records(out: Path) -> None:
    """Append the records of images in ``out`` that have none in samples.jsonl (a process stopped between
    writing an image and rank 0 writing its line; ``--gpus N``), read from the record each PNG carries."""
    log_path = out / LOG
    known = (
        {rec["file"] for _, rec in read_jsonl(log_path, is_record, warn=False)}
        if log_path.is_file()
        else set()
    )
    orphans = sorted(
        (int(m[1]), p) for p in out.iterdir() if (m := IMAGE_NAME.fullmatch(p.name)) and p.name not in known
    )
    found = [r for _, p in orphans if (r := embedded_record(p)) is not None and r.get("file") == p.name]
    if found:
        end_line(log_path)
        append_records(log_path, found)
        log.warning("%s: recovered the records of %d image(s) a stopped run wrote", log_path, len(found))
    if len(found) < len(orphans):
        log.warning(
            "%s: %d image(s) have no record (not written by dice sample?)", out, len(orphans) - len(found)
        )


@dataclass(frozen=True)
class SampleInputs:
    """What ``dice sample`` checks before anything heavy loads (``sample_inputs``)."""

    prompts: list[str]
    method: Method
    ignored: list[str]  # flags of other methods that the job sets although its method ignores them


def sample_inputs(job: SampleJob) -> SampleInputs:
    """The prompts and the method of ``job``, checked before anything heavy loads (also before ``--gpus N``
    starts its processes): an unknown method, a bad setting, bad prompts or seeds, a missing sharpener. The
    method spelling is parsed once, here."""
    cls, spelled = parse_method(job.method)
    settings, ignored = flag_settings(job, cls, spelled)
    method = cls.create(settings) if cls is not Dice else None  # bad settings fail first
    prompts = collect_prompts(job.prompts, job.prompts_file)
    check_seeds(seeds_of(job.seed, range(len(prompts))))
    check_sample_folder(Path(job.out))
    name = default_sharpener(job.model, job.sharpener) if cls is Dice else job.sharpener  # checked either way
    if cls is Dice and name is None:
        raise InputError("--method dice needs --sharpener (a folder written by `dice train`).")
    sharp = Sharpener.from_pretrained(name) if name else None  # the small file first: fails before the model
    if method is None:
        method = cls.create(settings, sharp)
    return SampleInputs(prompts, method, ignored)


def run_sample(job: SampleJob) -> list[Path]:
    """Generate and write ``out/NNNN_method_seedS.png``, each with a line in ``out/samples.jsonl``; returns the
    image paths. A folder that holds samples already keeps them: the numbers continue after its highest one
    and samples.jsonl grows by a line per image, so every image in the folder stays described.

    Launched as one of several processes (``--gpus N``, or torchrun), each makes the prompts of its share
    (``sampling.shard``) and rank 0 writes samples.jsonl, in prompt order; rank 0 returns every path, the
    others none."""
    inputs = sample_inputs(job)
    prompts, method = inputs.prompts, inputs.method
    if inputs.ignored:
        log.warning("--method %s ignores %s", job.method, ", ".join(inputs.ignored))
    if isinstance(method, CFG) and method.guidance_scale == 1.0:
        log.warning("cfg at guidance_scale=1 runs one pass per step: conditional sampling")
    pipe = job_pipeline(job.model, job.device, job.dtype)
    par = Parallel.current(pipe._execution_device)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    if par.main:
        recover_records(out)
    first = par.all_gather(next_index(out))[0]  # rank 0's, read before any rank writes
    mine = share(range(len(prompts)), par)

    def made():  # this rank's images: (index, sample, path, record)
        for s in generate(
            pipe,
            [prompts[i] for i in mine],
            method=method,
            seeds=seeds_of(job.seed, mine),
            negative_prompt=job.negative_prompt,
            num_inference_steps=job.steps,
            batch_size=job.batch_size,
            height=job.height,
            width=job.width,
            progress=job.progress and par.main,
            fast=job.fast,
        ):
            i = mine[s.index]
            path = out / f"{first + i:04d}_{s.method}_seed{s.seed}.png"
            record = {
                "file": path.name,
                "prompt": s.prompt,
                "seed": s.seed,
                "method": s.method,
                "nfe": s.nfe,
                "seconds": round(s.seconds, 4),
                "fast": s.fast,
                **s.params,
            }
            yield i, s, path, record

    rounds = write_samples(par, made(), len(mine), job.batch_size, out / LOG)
    return [out / r["file"] for records in rounds for r in records]
