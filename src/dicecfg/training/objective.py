"""The CFG-supervised distillation objective (docs/method.md, "Training objective"; arXiv 2502.03726).

loss = || eps(x_t, t, c + r(c, c_neg)) - [eps_u + w (eps_c - eps_u)] ||   (L1 or L2, summed over elements)

averaged over the global batch of a step (each process may go through its share in several micro-batches).

Loss weighting (ours; the paper weighs every sample alike, ``none``), per sample:
- ``x0``: the error of the x_0 that the prediction implies, x_0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) for an
  epsilon model (x_0 = sqrt(abar) x_t - sqrt(1-abar) v for a v model); it weighs the noisy timesteps, where
  layout and attributes are decided, far above the last ones;
- ``relative``: the error over the size of CFG's own correction, ||pred - cfg|| / ||eps_c - cfg||: the
  fraction of the guidance that the student misses (1 for the untrained sharpener), so every timestep and
  prompt counts alike whatever the size of its guidance term.
The held-out loss is always the unweighted one, so runs with different weightings compare.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..families import Cond, Family
from ..sharpener import Sharpener
from .sources import XtSource

LOSS_WEIGHTINGS = ("none", "x0", "relative")


def autocast_for(device: torch.device, mixed_precision: str) -> Callable[[], Any]:
    """A context factory: bf16 autocast when ``mixed_precision`` is "bf16", or "auto" on CUDA; else none."""
    if mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def own_precision(denoiser: torch.nn.Module) -> Callable[[], Any]:
    """A context factory for the frozen denoiser's calls inside the run's autocast: a denoiser whose weights are
    already half precision (bf16/fp16) runs in them, autocast off. Autocast would add nothing but casts there:
    it keeps normalisations and softmax in float32 and converts every activation before and after them (on an
    H100, SD1.5 at batch 16, eager: 69.7 instead of 56.8 samples/s; benchmarks/speed_profile). A float32
    denoiser keeps the run's autocast."""
    dtype = next(denoiser.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        device = next(denoiser.parameters()).device
        return lambda: torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext


def sample_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """L1 or L2 distance of each sample, summed over its elements (docs/method.md, "Training objective"): (B,)."""
    d = pred.float() - target.float()
    per = d.abs() if kind == "l1" else d.square()
    return per.flatten(1).sum(1)


def x0_weight(abar: torch.Tensor, prediction_type: str, kind: str) -> torch.Tensor:
    """Per-sample factor that turns the prediction's error into the error of the implied x_0 (squared for L2)."""
    r = (1 - abar).sqrt() if prediction_type == "v_prediction" else ((1 - abar) / abar).sqrt()
    return r if kind == "l1" else r.square()


def cfg_target(
    pipe, fam: Family, x_t, t, cond: Cond, neg: Cond, w: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher: eps_u + w (eps_c - eps_u) from one batched call of the frozen denoiser; also returns eps_c."""
    with torch.no_grad():
        both = fam.denoise(pipe, torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat([neg, cond]))
        eps_u, eps_c = both.chunk(2)
        return eps_u + w * (eps_c - eps_u), eps_c


def student(
    pipe,
    fam: Family,
    sharpener: Sharpener,
    x_t,
    t,
    cond: Cond,
    neg: Cond,
    denoiser_precision=contextlib.nullcontext,
) -> torch.Tensor:
    """Student: the same frozen denoiser on the sharpened embedding c + r(c, c_neg), no guidance; the denoiser
    runs inside ``denoiser_precision()`` (a context factory: ``own_precision``)."""
    sharp = sharpener.edit(cond.embeds, neg.embeds, 1.0, neg_mask=fam.key_mask(neg), t=t)
    with denoiser_precision():
        return fam.denoise(pipe, x_t, t, fam.edited(cond, sharp, sharpener.config["mask_mode"]))


@dataclass
class Objective:
    """The distillation objective of one run: teacher target, student prediction, loss, held-out loss."""

    pipe: Any
    fam: Family
    cfg: Any  # DistillConfig
    source: XtSource
    neg: Cond
    autocast: Any = field(default=contextlib.nullcontext)
    # a factory of the context the denoiser runs in, inside autocast (default: ``own_precision`` of the denoiser)
    denoiser_precision: Any = None
    # the memory format of the latents given to the denoiser (None: as made; DistillConfig.channels_last)
    memory_format: torch.memory_format | None = None

    def __post_init__(self) -> None:
        if self.denoiser_precision is None:
            self.denoiser_precision = own_precision(self.fam.denoiser(self.pipe))

    def batch_loss(
        self, sharpener: Sharpener, x0, noise, t, cond: Cond, neg: Cond | None = None, weighting: str = "none"
    ) -> torch.Tensor:
        """Distillation loss of one batch; c_neg is "" unless ``neg`` gives one per sample."""
        x_t = self.source.add_noise(x0, noise, t)
        if self.memory_format is not None and x_t.dim() == 4:
            x_t = x_t.contiguous(memory_format=self.memory_format)
        neg = self.neg.expand(len(cond)) if neg is None else neg
        with self.autocast():
            with self.denoiser_precision():
                target, eps_c = cfg_target(self.pipe, self.fam, x_t, t, cond, neg, self.cfg.guidance_scale)
            pred = student(self.pipe, self.fam, sharpener, x_t, t, cond, neg, self.denoiser_precision)
        per = sample_loss(pred, target, self.cfg.loss)
        if weighting == "x0":
            kind = self.pipe.scheduler.config.get("prediction_type", "epsilon")
            per = per * x0_weight(self.source.alphas_cumprod[t], kind, self.cfg.loss)
        elif weighting == "relative":
            scale = sample_loss(eps_c, target, self.cfg.loss)
            per = per / scale.clamp_min(1e-3 * scale.mean().item() + 1e-12)
        return per.mean()

    def accumulate(self, sharpener: Sharpener, step: int) -> torch.Tensor:
        """Backward pass of step ``step`` over this process's slice of the global batch, in ``grad_accum``
        micro-batches; adds to the gradients and returns the slice's mean loss (detached).

        Each micro-batch loss is a mean over ``batch_size`` samples, so dividing it by ``grad_accum`` makes the
        summed gradients those of the mean over the slice; averaging them over the processes then gives the
        gradient of the mean over the global batch, as one process with the whole batch computes it.
        """
        total = None
        for x0, noise, t, cond, neg in self.source.train_batches(step):
            loss = (
                self.batch_loss(sharpener, x0, noise, t, cond, neg, self.cfg.loss_weighting)
                / self.cfg.grad_accum
            )
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    @torch.no_grad()
    def eval_loss(self, sharpener: Sharpener) -> float:
        """Mean held-out distillation loss over the fixed evaluation tuples."""
        total, n = 0.0, 0
        for x0, noise, t, cond in self.source.eval_batches(self.source.infer_batch):
            total += self.batch_loss(sharpener, x0, noise, t, cond).item() * len(cond)
            n += len(cond)
        return total / n
