"""The jobs behind the `dice` commands: a frozen dataclass of options and one function each.

The CLI parses flags into these dataclasses; everything else (loading, running, writing) happens here, so the
same jobs are usable from Python.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..pipeline import load_pipeline
from ..runs.io import atomic_write_text
from ..sharpener import Sharpener
from ..training.data import load_prompts
from ..training.loop import DistillConfig, distill
from .generate import METHODS, generate

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None, device: str, training: bool = False) -> torch.dtype:
    """float16 for sampling / bfloat16 for training on CUDA, float32 on CPU, unless given."""
    if dtype:
        try:
            return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(
                dtype
            ) or getattr(torch, dtype)
        except AttributeError as e:
            raise InputError(f"Unknown dtype '{dtype}': use fp16, bf16 or fp32.") from e
    if device.startswith("cuda"):
        return torch.bfloat16 if training else torch.float16
    return torch.float32


def collect_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[str]:
    out = list(prompts)
    if prompts_file:
        out += load_prompts(prompts_file)
    if not out:
        raise InputError("No prompts: pass prompts as arguments or --prompts FILE.")
    return out


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
    if job.method not in METHODS:
        raise InputError(f"Unknown method '{job.method}'. Choose one of: {', '.join(METHODS)}.")
    prompts = collect_prompts(job.prompts, job.prompts_file)
    sharp = None
    if job.method == "dice":  # load the small file first: a bad path fails before the model loads
        name = job.sharpener or ("mini" if job.model in (None, "mini") else None)
        if name is None:
            raise InputError("--method dice needs --sharpener (a folder written by `dice train`).")
        sharp = Sharpener.from_pretrained(name)
    device = job.device or default_device()
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


@dataclass(frozen=True)
class TrainJob:
    out: str  # run folder (re-running the same command resumes)
    model: str | None = None  # hub id or local folder; None: the shipped mini model
    prompts_file: str | None = None  # prompt-only mode
    images: str | None = None  # image mode: folder of captioned images
    device: str | None = None
    dtype: str | None = None  # frozen model dtype; default bf16 on CUDA, fp32 on CPU
    config: DistillConfig = field(default_factory=DistillConfig)


def run_train(job: TrainJob) -> Sharpener:
    device = job.device or default_device()
    local_rank = os.environ.get("LOCAL_RANK")  # one GPU per process under torchrun / accelerate launch
    if local_rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device == "cuda":
        device = f"cuda:{int(local_rank)}"
    prompts = load_prompts(job.prompts_file) if job.prompts_file else None
    if prompts is None and job.images is None:
        raise InputError("dice train needs --prompts FILE (prompt-only) or --images DIR (captioned images).")
    pipe = load_pipeline(job.model, dtype=resolve_dtype(job.dtype, device, training=True), device=device)
    log.info("training a sharpener: %s", json.dumps(asdict(job.config)))
    return distill(pipe, prompts, config=job.config, images=job.images, output_dir=job.out)
