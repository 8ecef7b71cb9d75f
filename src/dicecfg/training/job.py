"""`dice train`: the options of a training run (a frozen dataclass) and the one function that runs it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace

from ..errors import InputError
from ..flags import Checked, opt
from ..pipeline import device_option, dtype_option, model_option
from ..runs.folder import check_run_folder
from ..runs.jobs import job_pipeline
from ..sampling.prompts import load_prompts
from ..sharpener import Sharpener
from .config import DEFAULT_RECIPE, RECIPES, DistillConfig
from .loop import distill

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob(Checked):
    """`dice train`: the model, the training data, the run folder and the recipe (``config``)."""

    out: str = opt(
        help="run folder: checkpoints, stats.jsonl, the final sharpener (re-run the same command to resume)",
        path="out_dir",
    )
    model: str | None = model_option()
    prompts_file: str | None = opt(
        None, "training prompts (prompt-only mode)", flag="--prompts", metavar="FILE", path="file"
    )
    images: str | None = opt(
        None, "captioned images: metadata.jsonl or NAME.txt sidecars (image mode)", metavar="DIR", path="dir"
    )
    negative_prompts_file: str | None = opt(
        None,
        "negative prompts, one per line: each sample uses a random one as c_neg with probability "
        "--negative-prob (default: always the empty prompt)",
        flag="--negative-prompts",
        metavar="FILE",
        path="file",
    )
    gpus: int = opt(
        1,
        "train data-parallel in N processes, one per GPU (relaunches itself, one process per rank; "
        "--batch-size is per process: global batch = batch-size x N x grad-accum; see docs/parallel.md)",
        metavar="N",
        min=1,
    )
    device: str | None = device_option()
    dtype: str | None = dtype_option(training=True)
    recipe: str = opt(
        DEFAULT_RECIPE,
        "named recipe the options below start from (options given override it): 'dicecfg' (ours, docs/recipes.md) "
        "or 'paper' (the paper's, exactly); in Python: training.config.recipe_config(NAME)",
        choices=tuple(RECIPES),
        presets=RECIPES,
        presets_for="config",
    )
    config: DistillConfig = opt(help="the training recipe", factory=DistillConfig)

    def resolved_config(self) -> DistillConfig:
        """``config`` with the negative prompts of ``negative_prompts_file`` (read here: a bad file fails before
        the model loads)."""
        if not self.negative_prompts_file:
            return self.config
        return replace(self.config, negative_prompts=tuple(load_prompts(self.negative_prompts_file)))


def run_train(job: TrainJob) -> Sharpener:
    config = job.resolved_config()
    prompts = load_prompts(job.prompts_file) if job.prompts_file else None
    if prompts is None and job.images is None:
        raise InputError("dice train needs --prompts FILE (prompt-only) or --images DIR (captioned images).")
    check_run_folder(job.out)  # before the model loads (distill checks it again)
    pipe = job_pipeline(job.model, job.device, job.dtype, training=True)
    shown = asdict(config)  # the negative prompts by their file and count (a run can have tens of thousands)
    if config.negative_prompts:
        where = f" from {job.negative_prompts_file}" if job.negative_prompts_file else ""
        shown["negative_prompts"] = f"{len(config.negative_prompts)} prompts{where}"
    log.info("training a sharpener: %s", json.dumps(shown))
    return distill(pipe, prompts, config=config, images=job.images, output_dir=job.out)
