"""`dice train`: the options of a training run (a frozen dataclass) and the one function that runs it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

from ..errors import InputError
from ..pipeline import load_pipeline, resolve_device, resolve_dtype
from ..sampling.prompts import load_prompts
from ..sharpener import Sharpener
from .config import DistillConfig
from .loop import distill

log = logging.getLogger(__name__)


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
    device = resolve_device(job.device)
    local_rank = os.environ.get("LOCAL_RANK")  # one GPU per process under torchrun / accelerate launch
    if local_rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device == "cuda":
        device = f"cuda:{int(local_rank)}"
    prompts = load_prompts(job.prompts_file) if job.prompts_file else None
    if prompts is None and job.images is None:
        raise InputError("dice train needs --prompts FILE (prompt-only) or --images DIR (captioned images).")
    pipe = load_pipeline(job.model, dtype=resolve_dtype(job.dtype, device, training=True), device=device)
    log.info("training a sharpener: %s", json.dumps(asdict(job.config)))
    return distill(pipe, prompts, config=job.config, images=job.images, output_dir=job.out)
