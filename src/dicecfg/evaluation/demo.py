"""`dice demo`: unguided, CFG and DICE side by side on held-out shapes-world prompts, on CPU, in under a minute.

Every method samples the same prompts from the same seeds through ``generate()``; the oracle scores each image
against the scene its prompt describes. Writes a labelled grid (rows: methods, columns: prompts) and a JSON.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..flags import opt
from ..pipeline import default_sharpener, load_pipeline, model_option, resolve_device
from ..runs.io import atomic_write_json
from ..sampling.grid import save_grid
from ..sharpener import Sharpener
from .evaluate import sample_and_score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoJob:
    """`dice demo`: which held-out prompts, how many steps, where to write the grid."""

    prompts: int = opt(8, "held-out prompts shown (spread over the held-out set)", metavar="N", min=1)
    steps: int = opt(20, "DPM-Solver++ steps for every method", min=1)
    guidance_scale: float = opt(5.0, "CFG scale w (the paper's)", min=1.0)
    model: str | None = model_option()
    sharpener: str | None = opt(None, "sharpener folder (default with the mini model: the shipped one)")
    out: str = opt("dice-demo", "folder for grid.png and demo.json", path="out_dir")
    device: str = opt("cpu", "cuda, cuda:1, cpu, ... (the demo is made for the CPU)")
    progress: bool = opt(True, "progress bars", cli=False)


def run_demo(job: DemoJob) -> dict[str, Any]:
    """Run the demo; returns the summary that is also written to ``out/demo.json``."""
    from ..world import Oracle, heldout_set

    items = heldout_set()
    step = max(1, len(items) // job.prompts)
    picked = items[::step][: job.prompts]
    prompts, seeds = [it.prompt for it in picked], [it.seed for it in picked]
    name = default_sharpener(job.model, job.sharpener)
    if name is None:
        raise InputError("dice demo with a model of your own needs its sharpener (sharpener=...).")
    sharp = Sharpener.from_pretrained(name)  # the small file first: a bad path fails before the model loads
    pipe = load_pipeline(job.model, device=resolve_device(job.device))
    oracle = Oracle()
    rows, table = [], []
    for method in ("unguided", "cfg", "dice"):
        images, samples, score = sample_and_score(
            pipe,
            picked,
            method,
            oracle=oracle,
            sharpener=sharp,
            guidance_scale=job.guidance_scale,
            num_inference_steps=job.steps,
            batch_size=len(prompts),
            progress=job.progress,
        )
        correct = score["all"].astype(float)
        rows.append(images)
        table.append(
            {
                "method": method,
                "nfe": samples[0].nfe,
                "seconds_per_image": float(np.mean([s.seconds for s in samples])),
                "alignment": float(correct.mean()),
                "correct": correct.tolist(),
            }
        )
    out = Path(job.out)
    labels = [f"{m['method']} #{i + 1}" for m in table for i in range(len(prompts))]
    tiles = [img.repeat(2, axis=0).repeat(2, axis=1) for r in rows for img in r]  # 2x nearest, easier to see
    save_grid(tiles, out / "grid.png", cols=len(prompts), labels=labels)
    summary = {
        "job": asdict(job),
        "prompts": prompts,
        "seeds": seeds,
        "methods": table,
        "grid": str(out / "grid.png"),
    }
    atomic_write_json(out / "demo.json", summary)
    return summary
