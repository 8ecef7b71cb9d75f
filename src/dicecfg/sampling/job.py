"""`dice sample`: the options of a sampling run (a frozen dataclass) and the one function that runs it.

The CLI parses flags into the dataclass; loading, sampling and writing happen here, so the same job is usable
from Python.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..pipeline import default_sharpener, load_pipeline, resolve_device, resolve_dtype
from ..runs.io import atomic_write_text
from ..sharpener import Sharpener
from .generate import generate
from .methods import lookup
from .prompts import collect_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleJob:
    prompts: tuple[str, ...] = ()  # prompts given on the command line
    prompts_file: str | None = None  # text file (one prompt per line) or JSONL
    model: str | None = None  # hub id or local diffusers folder; None: the shipped mini model
    sharpener: str | None = (
        None  # sharpener folder or hub id; None: the shipped one ("mini") for the mini model
    )
    method: str = "dice"  # unguided | cfg | scaling | dice
    guidance_scale: float = 5.0  # CFG scale w (method cfg)
    alpha: float = 1.0  # edit strength (method dice)
    scale: float = 1.2  # embedding scale s (method scaling)
    negative_prompt: str | None = None  # c_neg for cfg and dice
    steps: int = 20  # sampling steps
    seed: int = 0  # seed of the first image; image i uses seed + i
    batch_size: int = 8  # images per pipeline call (results do not depend on it)
    height: int | None = None  # default: the model's native size
    width: int | None = None
    out: str = "samples"  # output folder
    device: str | None = None  # default: cuda if available
    dtype: str | None = None  # default: fp16 on CUDA, fp32 on CPU
    fast: bool = False  # replay the denoiser as CUDA graphs (eager with a notice off CUDA)
    progress: bool = True


def run_sample(job: SampleJob) -> list[Path]:
    """Generate and write ``out/NNNN_method_seedS.png`` plus ``samples.jsonl``; returns the image paths."""
    lookup(job.method)  # an unknown method fails before anything loads
    prompts = collect_prompts(job.prompts, job.prompts_file)
    sharp = None
    if job.method == "dice":  # load the small file first: a bad path fails before the model loads
        name = default_sharpener(job.model, job.sharpener)
        if name is None:
            raise InputError("--method dice needs --sharpener (a folder written by `dice train`).")
        sharp = Sharpener.from_pretrained(name)
    device = resolve_device(job.device)
    pipe = load_pipeline(job.model, dtype=resolve_dtype(job.dtype, device), device=device)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    paths, records = [], []
    for s in generate(
        pipe,
        prompts,
        method=job.method,
        seeds=job.seed,
        sharpener=sharp,
        negative_prompt=job.negative_prompt,
        guidance_scale=job.guidance_scale,
        scale=job.scale,
        alpha=job.alpha,
        num_inference_steps=job.steps,
        batch_size=job.batch_size,
        height=job.height,
        width=job.width,
        progress=job.progress,
        fast=job.fast,
    ):
        path = out / f"{s.index:04d}_{s.method}_seed{s.seed}.png"
        s.pil().save(path)
        paths.append(path)
        records.append(
            {
                "file": path.name,
                "prompt": s.prompt,
                "seed": s.seed,
                "method": s.method,
                "nfe": s.nfe,
                "seconds": round(s.seconds, 4),
                **s.params,
            }
        )
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return paths
