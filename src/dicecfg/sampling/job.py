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
from ..flags import opt
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
from ..runs.io import atomic_write_text
from ..sharpener import Sharpener
from .generate import generate
from .methods import METHODS, lookup
from .prompts import collect_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleJob:
    """`dice sample`: what to generate, how, and where to write it."""

    prompts: tuple[str, ...] = opt((), "prompts (or use --prompts FILE)", positional=True)
    prompts_file: str | None = opt(
        None, "text file (one prompt per line) or JSONL", flag="--prompts", metavar="FILE"
    )
    model: str | None = model_option()
    sharpener: str | None = sharpener_option()
    method: str = opt("dice", "sampling method", choices=METHODS)
    guidance_scale: float = opt(5.0, "CFG scale w (method cfg)")
    alpha: float = opt(1.0, "edit strength (method dice)")
    scale: float = opt(1.2, "embedding scale s (method scaling)")
    negative_prompt: str | None = opt(None, "negative prompt: c_neg for cfg and dice")
    steps: int = opt(20, "sampling steps")
    seed: int = opt(0, "seed of the first image; image i uses seed + i")
    batch_size: int = opt(8, "images per pipeline call (results do not depend on it)")
    height: int | None = opt(None, "image height in pixels (default: the model's native size)")
    width: int | None = opt(None, "image width in pixels (default: the model's native size)")
    out: str = opt("samples", "output folder")
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    fast: bool = opt(
        False,
        "replay the denoiser as CUDA graphs: same images, fewer kernel launches (CUDA only; eager with a "
        "notice elsewhere; docs/fast.md)",
    )
    progress: bool = opt(True, "progress bars", cli=False)


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
