"""`dice sample`: the options of a sampling run (a frozen dataclass) and the one function that runs it.

The CLI parses flags into the dataclass; loading, sampling and writing happen here, so the same job is usable
from Python.
"""

from __future__ import annotations

import json
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
    load_pipeline,
    model_option,
    resolve_device,
    resolve_dtype,
    sharpener_option,
)
from ..runs.io import atomic_write
from ..runs.parallel import Parallel, rank_device
from ..sharpener import Sharpener
from .checks import SEED_MAX, check_seeds
from .fast import FAST_CHOICES
from .generate import generate
from .methods import CFG, Dice, Method
from .prompts import collect_prompts
from .shard import gathered, share
from .spelling import parse_method, spelling_help

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
        "sample in N processes, one per GPU, prompts split by index (relaunches itself through "
        "torch.distributed.run; the same images as one process; docs/parallel.md)",
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


def next_index(out: Path) -> int:
    """The number the next sample in ``out`` gets: one past the highest ``NNNN_...`` file already there."""
    taken = (int(m[1]) for p in out.iterdir() if (m := re.match(r"(\d+)_", p.name)))
    return max(taken, default=-1) + 1


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
    check_seeds(range(job.seed, job.seed + len(prompts)))
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

    Launched as one of several processes (``--gpus N``, torchrun), each makes the prompts of its share
    (``sampling.shard``) and rank 0 writes samples.jsonl, in prompt order; rank 0 returns every path, the
    others none."""
    inputs = sample_inputs(job)
    prompts, method = inputs.prompts, inputs.method
    if inputs.ignored:
        log.warning("--method %s ignores %s", job.method, ", ".join(inputs.ignored))
    if isinstance(method, CFG) and method.guidance_scale == 1.0:
        log.warning("cfg at guidance_scale=1 runs one pass per step: conditional sampling")
    device = rank_device(resolve_device(job.device))  # one GPU per process under torchrun
    pipe = load_pipeline(job.model, dtype=resolve_dtype(job.dtype, device), device=device)
    par = Parallel.current(pipe._execution_device)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    first = par.all_gather(next_index(out))[0]  # rank 0's, read before any rank writes
    index = out / "samples.jsonl"
    if par.main and index.is_file() and not index.read_bytes().endswith(b"\n") and index.stat().st_size:
        with open(index, "a", encoding="utf-8") as f:  # a line cut short by a kill: end it
            f.write("\n")
    mine = share(range(len(prompts)), par)

    def made():  # this rank's images, written as they come; their records
        for s in generate(
            pipe,
            [prompts[i] for i in mine],
            method=method,
            seeds=[job.seed + i for i in mine],
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
            atomic_write(path, lambda tmp, s=s: s.pil().save(tmp, format="PNG"))
            yield {
                "index": i,
                "file": path.name,
                "prompt": s.prompt,
                "seed": s.seed,
                "method": s.method,
                "nfe": s.nfe,
                "seconds": round(s.seconds, 4),
                "fast": s.fast,
                **s.params,
            }

    paths = []
    for records in gathered(par, made(), len(mine), job.batch_size):
        with open(index, "a", encoding="utf-8") as f:  # whole lines, after their PNGs
            for r in records:
                del r["index"]
                f.write(json.dumps(r) + "\n")
                paths.append(out / r["file"])
    return paths
